"""Annotate documents with one misalignment score per segment: in parallel, cached on disk, resumable, and
shardable across machines.

Code documents carry their file (`Document.context`): the file is scored once, in one piece, and each document
takes its lines' scores, so pycodestyle sees the blank lines between definitions (E302/E305) that a piece scored
alone hides. Documents with `given_scores` of the task's scorer (the paper's scored data sets) keep them.

Scoring runs in chunks of about equal size; with a cache directory every finished chunk is written at once
(atomically) beside the final file, so a killed run resumes where it stopped. `annotate_shard` scores one of N
shards (documents assigned by a stable hash of their source, so a file never straddles two), and `merge_shards`
puts the shards back together into exactly what `annotate` would have produced, stored where it looks for it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from prefer.data.documents import Document, stable_hash
from prefer.errors import PreferError
from prefer.files import atomic_path
from prefer.scorers import get_segment_scorer, scorer_version

# Below this many characters per chunk, starting processes costs more than it saves.
_MIN_CHUNK_CHARS = 50_000
# Chunks per corpus (at least): enough to spread over the workers of one machine and to make resuming cheap.
# Not a function of the worker count, so that a resumed run cuts the same chunks.
_TARGET_CHUNKS = 256


@dataclass(frozen=True)
class AnnotatedDocument:
    """A document with one misalignment score per segment (lower is better)."""

    segments: tuple[str, ...]
    scores: tuple[float, ...]
    source: str


# A job is one scorer call: (the segments scored together, [(document index, first segment, count), ...]):
# a whole file shared by its documents, or one document on its own.
Job = tuple[tuple[str, ...], list[tuple[int, int, int]]]


def _score_chunk(scorer: str, chunk: list[tuple[str, ...]]) -> list[list[float]]:
    """Worker: segment scores for each job of a chunk (module level so it pickles)."""
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


def _jobs(documents: Sequence[Document], scorer: str) -> tuple[list[Job], dict[int, tuple[float, ...]]]:
    """(jobs, given scores by document index): documents of one file context share a job."""
    jobs: list[Job] = []
    given: dict[int, tuple[float, ...]] = {}
    by_file: dict[tuple[str, int], int] = {}
    for i, doc in enumerate(documents):
        n = len(doc.segments)
        if doc.given_scores is not None and doc.given_scores.scorer == scorer:
            if len(doc.given_scores.values) != n:
                raise PreferError(f"{doc.source}: {len(doc.given_scores.values)} given scores for {n} segments")
            given[i] = doc.given_scores.values
            continue
        ctx = doc.context
        if ctx is None:
            jobs.append((doc.segments, [(i, 0, n)]))
            continue
        if ctx.segments[ctx.start : ctx.start + n] != doc.segments:
            raise PreferError(f"{doc.source}: the document is not lines {ctx.start + 1}-{ctx.start + n} of its file")
        key = (doc.source, id(ctx.segments))  # documents of one file share the very same tuple
        if key not in by_file:
            by_file[key] = len(jobs)
            jobs.append((ctx.segments, []))
        jobs[by_file[key]][1].append((i, ctx.start, n))
    return jobs, given


def _chunks(sizes: Sequence[int], target: int) -> list[list[int]]:
    """Consecutive job indices in chunks of about `target` characters: by size, not count, because a
    changelog entry is 100 characters and a module can be 100k."""
    chunks, current, size = [], [], 0
    for i, s in enumerate(sizes):
        current.append(i)
        size += s
        if size >= target:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


def _chunk_file(partial_dir: Path, chunk: list[int]) -> Path:
    return partial_dir / f"chunk-{chunk[0]:08d}-{chunk[-1]:08d}.json.gz"


def _write_gzip_json(path: Path, obj) -> None:
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        gz.write(json.dumps(obj).encode("utf-8"))


def _read_chunk(path: Path, jobs: Sequence[Job], chunk: list[int]) -> list[list[float]] | None:
    """A finished chunk's scores, or None when it is missing, damaged or does not fit its jobs."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            scores = json.load(f)
    except (OSError, EOFError, zlib.error, ValueError):
        return None
    if (
        not isinstance(scores, list)
        or len(scores) != len(chunk)
        or any(not isinstance(s, list) or len(s) != len(jobs[j][0]) for s, j in zip(scores, chunk))
    ):
        return None
    return scores


def _score_jobs(
    jobs: Sequence[Job], scorer: str, *, workers: int | None, progress: bool, partial_dir: Path | None
) -> list[list[float]]:
    """Scores of every job. With partial_dir, chunks finished by an earlier run are read from it, and each
    chunk finished now is written to it as soon as it is done."""
    sizes = [sum(map(len, segments)) for segments, _ in jobs]
    chunks = _chunks(sizes, max(_MIN_CHUNK_CHARS, sum(sizes) // _TARGET_CHUNKS))
    results: list[list[float] | None] = [None] * len(jobs)

    def take(chunk: list[int], scores: list[list[float]]) -> int:
        for j, s in zip(chunk, scores):
            results[j] = s
        return sum(len(jobs[j][1]) for j in chunk)

    todo, resumed = [], 0
    for chunk in chunks:
        done = _read_chunk(_chunk_file(partial_dir, chunk), jobs, chunk) if partial_dir is not None else None
        if done is None:
            todo.append(chunk)
        else:
            resumed += take(chunk, done)

    def finish(chunk: list[int], scores: list[list[float]]) -> int:
        if partial_dir is not None:
            _write_gzip_json(_chunk_file(partial_dir, chunk), scores)
        return take(chunk, scores)

    total = sum(len(members) for _, members in jobs)
    workers = min(max(1, workers or os.cpu_count() or 1), len(todo) or 1)
    with tqdm(total=total, initial=resumed, unit="doc", desc=f"scoring {scorer}", disable=not progress) as bar:
        if workers <= 1:
            for chunk in todo:
                bar.update(finish(chunk, _score_chunk(scorer, [jobs[j][0] for j in chunk])))
        else:
            method = _start_method()
            if method == "fork":
                # Score the first chunk here before forking: what the scorer builds on first use (importing
                # scrubadub and its nltk takes seconds) is then inherited by every worker instead of being
                # built again in each of them.
                first, todo = todo[0], todo[1:]
                bar.update(finish(first, _score_chunk(scorer, [jobs[j][0] for j in first])))
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(_score_chunk, scorer, [jobs[j][0] for j in chunk]): chunk for chunk in todo}
                for future in as_completed(futures):
                    bar.update(finish(futures[future], future.result()))
    return results  # type: ignore[return-value]


def _annotate(
    documents: Sequence[Document], scorer: str, *, workers: int | None, progress: bool, partial_dir: Path | None
) -> list[AnnotatedDocument]:
    jobs, given = _jobs(documents, scorer)
    scores: dict[int, tuple[float, ...]] = dict(given)
    for (_, members), job_scores in zip(
        jobs, _score_jobs(jobs, scorer, workers=workers, progress=progress, partial_dir=partial_dir)
    ):
        for i, start, n in members:
            scores[i] = tuple(job_scores[start : start + n])
    return [AnnotatedDocument(doc.segments, scores[i], doc.source) for i, doc in enumerate(documents)]


def cache_key(documents: Sequence[Document], scorer: str) -> str:
    """sha256 of the scorer, its version, and every document's source and segments (segment
    boundaries change scores too), its file context if it has one (the file changes the scores of a piece:
    that keeps caches of pieces scored alone from being reused) and its given scores if they are the scorer's.
    Lengths prefix each field so concatenations cannot collide."""
    h = hashlib.sha256()

    def put(s: str) -> None:
        b = s.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)

    files: dict[int, str] = {}  # id of a context's segments -> its digest, computed once per file
    put(scorer)
    put(scorer_version(scorer))
    for doc in documents:
        put(doc.source)
        h.update(len(doc.segments).to_bytes(8, "little"))
        for seg in doc.segments:
            put(seg)
        if doc.context is not None:
            segments = doc.context.segments
            if id(segments) not in files:
                files[id(segments)] = hashlib.sha256(
                    "\0".join(segments).encode("utf-8", "surrogatepass") + len(segments).to_bytes(8, "little")
                ).hexdigest()
            put(f"context {files[id(segments)]} {doc.context.start}")
        if doc.given_scores is not None and doc.given_scores.scorer == scorer:
            put(f"given {json.dumps(doc.given_scores.values)}")
    return h.hexdigest()


def _file_label(scorer: str) -> str:
    """The scorer's name as a piece of a file name: a user's (`py:path/to/file.py:fn`) holds / and : (the cache
    key, not the label, tells scorers apart)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", scorer)[:64]


def annotation_path(cache_dir: str | os.PathLike, documents: Sequence[Document], scorer: str) -> Path:
    """Where annotate caches the annotation of these documents by this scorer."""
    return Path(cache_dir) / f"annotations-{_file_label(scorer)}-{cache_key(documents, scorer)}.jsonl.gz"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def annotate(
    documents: Sequence[Document],
    scorer: str,
    *,
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[AnnotatedDocument]:
    """Score every segment of every document with SEGMENT_SCORERS[scorer]: each document as a whole, or
    its whole file when it has a context, so that context such as indentation and blank lines counts;
    documents with given scores of this scorer keep them.

    workers: processes (default os.cpu_count()); 1, or a corpus too small to split, runs in this
    process. cache_dir: results are stored under a key of the scorer, its version and all inputs,
    and a later call with the same inputs loads them without scoring; chunks are saved as they finish,
    so an interrupted call resumes.
    """
    get_segment_scorer(scorer)  # an unknown name fails before any work
    if cache_dir is None:
        return _annotate(documents, scorer, workers=workers, progress=progress, partial_dir=None)
    cache = annotation_path(cache_dir, documents, scorer)
    if cache.exists():
        try:
            return load_annotated(cache)
        except PreferError:
            pass  # a damaged cache file is rebuilt below
    out = _annotate(documents, scorer, workers=workers, progress=progress, partial_dir=_partial(cache))
    save_annotated(cache, out)
    shutil.rmtree(_partial(cache), ignore_errors=True)
    return out


def shard_of(source: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) of a document source: a stable hash, the same on every machine."""
    return min(num_shards - 1, int(stable_hash("shard", source) * num_shards))


def shard_path(
    cache_dir: str | os.PathLike, documents: Sequence[Document], scorer: str, *, shard_index: int, num_shards: int
) -> Path:
    """The file of one shard of the annotation of `documents` (all of them: every shard names the corpus)."""
    key = f"{_file_label(scorer)}-{cache_key(documents, scorer)}"
    return Path(cache_dir) / f"annotations-{key}.shard-{shard_index:04d}-of-{num_shards:04d}.jsonl.gz"


def _check_shards(shard_index: int | None, num_shards: int) -> None:
    if num_shards < 1:
        raise PreferError(f"num_shards must be >= 1, got {num_shards}")
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise PreferError(f"shard_index must be in [0, {num_shards}), got {shard_index}")


def annotate_shard(
    documents: Sequence[Document],
    scorer: str,
    *,
    shard_index: int,
    num_shards: int,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Annotate only the documents of shard `shard_index` of `num_shards` (by shard_of their source) and
    write them to shard_path; returns that path. A shard already written is not scored again; an interrupted
    one resumes from its finished chunks."""
    get_segment_scorer(scorer)
    _check_shards(shard_index, num_shards)
    path = shard_path(cache_dir, documents, scorer, shard_index=shard_index, num_shards=num_shards)
    if path.exists():
        try:
            load_annotated(path)
            return path
        except PreferError:
            pass  # damaged: scored again below
    mine = [d for d in documents if shard_of(d.source, num_shards) == shard_index]
    save_annotated(path, _annotate(mine, scorer, workers=workers, progress=progress, partial_dir=_partial(path)))
    shutil.rmtree(_partial(path), ignore_errors=True)
    return path


def merge_shards(
    documents: Sequence[Document], scorer: str, *, num_shards: int, cache_dir: str | os.PathLike
) -> list[AnnotatedDocument]:
    """The annotation of `documents` put together from its num_shards shard files, in document order: the
    same as annotate() gives, and saved where annotate() looks for it (a later annotate() call with the same
    cache_dir loads it). PreferError naming the missing shards, or the shard file that does not fit."""
    _check_shards(None, num_shards)
    paths = [shard_path(cache_dir, documents, scorer, shard_index=i, num_shards=num_shards) for i in range(num_shards)]
    missing = [str(i) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        raise PreferError(
            f"shards {', '.join(missing)} of {num_shards} are not scored yet: run `prefer corpus "
            f"data.shard_index=I data.num_shards={num_shards}` for each (same corpus and cache_dir)"
        )
    shards = [iter(load_annotated(p)) for p in paths]
    out = []
    for doc in documents:
        i = shard_of(doc.source, num_shards)
        scored = next(shards[i], None)
        if scored is None or scored.source != doc.source or scored.segments != doc.segments:
            raise PreferError(f"{paths[i]}: does not match the corpus at document {doc.source!r}")
        out.append(scored)
    for i, rest in enumerate(shards):
        if next(rest, None) is not None:
            raise PreferError(f"{paths[i]}: more documents than the corpus has in shard {i}")
    save_annotated(annotation_path(cache_dir, documents, scorer), out)
    return out


def score_summary(documents: Sequence[AnnotatedDocument], *, threshold: float) -> dict:
    """Corpus statistics of segment scores. A segment is bad if its score > threshold; a document
    is bad if its mean segment score > threshold (the filtering rule). "pooled_per_char" is the
    length-weighted mean: total matches or violations per character of the corpus."""
    import numpy as np  # here, not at the top: scoring never needs it, and its import is ~0.1 s of every worker's start

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
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        for d in documents:
            line = json.dumps({"source": d.source, "segments": d.segments, "scores": d.scores}, ensure_ascii=False)
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
                    doc = AnnotatedDocument(tuple(r["segments"]), tuple(float(s) for s in r["scores"]), r["source"])
                except (ValueError, KeyError, TypeError) as e:
                    raise PreferError(f"{path}:{n}: not an annotated document ({e})") from None
                if len(doc.scores) != len(doc.segments) or not all(isinstance(s, str) for s in doc.segments):
                    raise PreferError(f"{path}:{n}: expected one score per string segment")
                out.append(doc)
    except (OSError, EOFError, zlib.error) as e:  # missing file, not gzip, truncated
        raise PreferError(f"{path}: cannot read annotations: {e}") from None
    return out
