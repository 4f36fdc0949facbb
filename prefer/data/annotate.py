"""Annotate documents with one misalignment score per segment, in parallel, cached on disk."""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prefer.data.corpora import Document
from prefer.errors import PreferError
from prefer.io import atomic_path
from prefer.scorers import SCORER_VERSIONS, get_segment_scorer

# Below this many characters per worker, starting processes costs more than it saves.
_MIN_CHUNK_CHARS = 50_000


@dataclass(frozen=True)
class AnnotatedDocument:
    """A document with one misalignment score per segment (lower is better)."""

    segments: tuple[str, ...]
    scores: tuple[float, ...]
    source: str


def _score_chunk(scorer: str, chunk: list[tuple[str, ...]]) -> list[list[float]]:
    """Worker: segment scores for each document of a chunk (module level so it pickles)."""
    fn = get_segment_scorer(scorer)
    out = []
    for segments in chunk:
        scores = fn(segments)
        if len(scores) != len(segments):
            raise RuntimeError(f"scorer {scorer!r} returned {len(scores)} scores for {len(segments)} segments")
        out.append([float(s) for s in scores])
    return out


def _start_method() -> str:
    """fork on Linux: spawn and forkserver re-import the caller's __main__, which breaks any script
    without an `if __name__ == "__main__"` guard. Forking a parent that holds torch threads is safe
    here because the workers only run pure-Python scorers and never touch those threads' locks."""
    return "fork" if sys.platform == "linux" else "spawn"


def _chunks(documents: Sequence[Document], target_chars: int) -> list[list[int]]:
    """Consecutive document indices in chunks of about target_chars characters: by size, not
    count, because a changelog entry is 100 characters and a module preamble can be 100k."""
    chunks, current, size = [], [], 0
    for i, doc in enumerate(documents):
        current.append(i)
        size += sum(map(len, doc.segments))
        if size >= target_chars:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


def cache_key(documents: Sequence[Document], scorer: str) -> str:
    """sha256 of the scorer, its version, and every document's source and segments (segment
    boundaries change scores too). Lengths prefix each field so concatenations cannot collide."""
    h = hashlib.sha256()

    def put(s: str) -> None:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)

    put(scorer)
    put(SCORER_VERSIONS[scorer])
    for doc in documents:
        put(doc.source)
        h.update(len(doc.segments).to_bytes(8, "little"))
        for seg in doc.segments:
            put(seg)
    return h.hexdigest()


def annotate(documents: Sequence[Document], scorer: str, *, cache_dir: Path | None = None,
             workers: int | None = None, progress: bool = True) -> list[AnnotatedDocument]:
    """Score every segment of every document with SEGMENT_SCORERS[scorer] (each document scored
    as a whole, so context such as indentation counts).

    workers: processes (default os.cpu_count()); 1, or a corpus too small to split, runs in this
    process. cache_dir: results are stored under a key of the scorer, its version and all inputs,
    and a later call with the same inputs loads them without scoring.
    """
    get_segment_scorer(scorer)  # an unknown name fails before any work
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"annotations-{scorer}-{cache_key(documents, scorer)}.jsonl.gz"
        if cache.exists():
            try:
                return load_annotated(cache)
            except PreferError:
                pass  # a damaged cache file is rebuilt below

    workers = max(1, workers or os.cpu_count() or 1)
    total = sum(len(seg) for doc in documents for seg in doc.segments)
    chunks = _chunks(documents, max(_MIN_CHUNK_CHARS, total // (workers * 16)))
    workers = min(workers, len(chunks))
    scores: list[list[float] | None] = [None] * len(documents)
    with tqdm(total=len(documents), unit="doc", desc=f"scoring {scorer}", disable=not progress) as bar:
        if workers <= 1:
            for chunk in chunks:
                for i, s in zip(chunk, _score_chunk(scorer, [documents[i].segments for i in chunk])):
                    scores[i] = s
                bar.update(len(chunk))
        else:
            ctx = multiprocessing.get_context(_start_method())
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(_score_chunk, scorer, [documents[i].segments for i in chunk]): chunk
                           for chunk in chunks}
                for future in as_completed(futures):
                    chunk = futures[future]
                    for i, s in zip(chunk, future.result()):
                        scores[i] = s
                    bar.update(len(chunk))

    out = [AnnotatedDocument(doc.segments, tuple(s), doc.source) for doc, s in zip(documents, scores)]
    if cache is not None:
        save_annotated(cache, out)
    return out


def score_summary(documents: Sequence[AnnotatedDocument], *, threshold: float) -> dict:
    """Corpus statistics of segment scores. A segment is bad if its score > threshold; a document
    is bad if its mean segment score > threshold (the filtering rule). "pooled_per_char" is the
    length-weighted mean: total matches or violations per character of the corpus."""
    flat = np.array([s for d in documents for s in d.scores], dtype=np.float64)
    lengths = np.array([len(seg) for d in documents for seg in d.segments], dtype=np.float64)
    doc_means = np.array([np.mean(d.scores) if d.scores else 0.0 for d in documents])
    has = flat.size > 0
    qs = {q: float(np.quantile(flat, float(q))) if has else None for q in ("0.5", "0.9", "0.99", "0.999")}
    return {
        "documents": len(documents),
        "segments": int(flat.size),
        "mean": float(flat.mean()) if has else None,
        "pooled_per_char": float((flat * lengths).sum() / max(1.0, lengths.sum())) if has else None,
        "quantiles": qs | {"max": float(flat.max()) if has else None},
        "fraction_bad_segments": float((flat > threshold).mean()) if has else 0.0,
        "fraction_bad_documents": float((doc_means > threshold).mean()) if documents else 0.0,
        "threshold": threshold,
    }


def save_annotated(path: str | os.PathLike, documents: Sequence[AnnotatedDocument]) -> None:
    """gzip JSONL, one {"source", "segments", "scores"} per line, written atomically; mtime 0 in
    the gzip header so equal contents give equal bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            for d in documents:
                line = json.dumps({"source": d.source, "segments": d.segments, "scores": d.scores},
                                  ensure_ascii=False)
                gz.write((line + "\n").encode("utf-8"))


def load_annotated(path: str | os.PathLike) -> list[AnnotatedDocument]:
    """Read what save_annotated wrote; PreferError naming path:line for anything malformed."""
    path = Path(path)
    out = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    r = json.loads(line)
                    doc = AnnotatedDocument(tuple(r["segments"]), tuple(float(s) for s in r["scores"]),
                                            r["source"])
                except (ValueError, KeyError, TypeError) as e:
                    raise PreferError(f"{path}:{n}: not an annotated document ({e})") from None
                if len(doc.scores) != len(doc.segments) or not all(isinstance(s, str) for s in doc.segments):
                    raise PreferError(f"{path}:{n}: expected one score per string segment")
                out.append(doc)
    except (OSError, EOFError, zlib.error) as e:  # missing file, not gzip, truncated
        raise PreferError(f"{path}: cannot read annotations: {e}") from None
    return out
