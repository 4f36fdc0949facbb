"""Prose documents -> sentences: the segments the paper scores for prose (Korbak et al. 2023 split documents
into sentences with pysbd). Code and changelogs are split into lines elsewhere (`documents.split_lines`).

Sentences are cuts of the original text, so they concatenate exactly to it: each keeps the whitespace that
follows it. pysbd decides where sentences end; this module only maps its sentences back onto the text.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import re
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from importlib.metadata import version
from itertools import accumulate
from pathlib import Path

import pysbd
from tqdm import tqdm

from prefer.files import atomic_path

# A newline inside a paragraph: the text is wrapped and the sentence goes on. pysbd ends a sentence at every
# newline, so each one becomes a space (same length: offsets stay valid) before pysbd sees the text.
_SOFT_BREAK = re.compile(r"(?<=\S)\n(?=[ \t]*\S)")
# A paragraph break (a blank line) always ends a sentence: paragraphs are segmented one at a time.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_WORD = re.compile(r"\w")
# pysbd sometimes starts the next sentence with the quote that closes this one ('wound."' + '" Then...'): a
# cut right after sentence-ending punctuation moves past closing quotes and brackets and the space after them.
_ENDERS = ".!?\u2026"
_CLOSERS = "\"')]\u201d\u2019"

# Part of the cache key of split_sentences_many: bump it whenever split_sentences cuts differently.
SPLITTER_VERSION = f"1-pysbd{version('pysbd')}"

# Below this many texts a process pool costs more than it saves (pysbd runs at about 100 kB/s per core).
_MIN_PARALLEL_TEXTS = 2_000


@lru_cache(maxsize=1)
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False)


def _sentence_starts(flat: str, start: int, end: int) -> list[int]:
    """Offsets (into flat) where pysbd starts a sentence within flat[start:end]."""
    starts, cursor = [], start
    # Processor, not Segmenter.segment: segment() locates each sentence with a fresh regex (slow, and it can
    # match an earlier repeat of the sentence); a forward str.find from the last match cannot go backwards.
    for sentence in _segmenter().processor(flat[start:end]).process():
        sentence = sentence.strip()
        at = flat.find(sentence, cursor, end) if sentence else -1
        if at >= 0:  # pysbd may rewrite a sentence it cannot find again: then there is no cut there
            starts.append(_past_closers(flat, at, end))
            cursor = at + len(sentence)
    return starts


def _past_closers(flat: str, cut: int, end: int) -> int:
    moved = cut
    while moved < end and flat[moved] in _CLOSERS and moved > 0 and flat[moved - 1] in _ENDERS + _CLOSERS:
        moved += 1
    if moved == cut:
        return cut
    while moved < end and flat[moved].isspace():
        moved += 1
    return moved


def split_sentences(text: str) -> tuple[str, ...]:
    """Sentences of `text`, concatenating exactly to it (whitespace goes with the sentence before it).

    Boundaries are pysbd's (English rules: abbreviations, numbers, ellipses; a quotation stays with its
    sentence), found with wrapped lines joined; blank lines always end a sentence. A piece with no letter or
    digit (a closing quote or a dash pysbd cut off) joins the sentence before it, or the one after it at the
    start of the text.
    """
    if not text:
        return ()
    flat = _SOFT_BREAK.sub(" ", text)
    paragraphs = [0, *(m.end() for m in _PARAGRAPH_BREAK.finditer(flat))]
    cuts = []
    for start, end in zip(paragraphs, [*paragraphs[1:], len(flat)]):
        cuts.append(start)
        cuts.extend(s for s in _sentence_starts(flat, start, end) if s > start)
    cuts = sorted({c for c in cuts if c < len(text)})
    pieces: list[str] = []
    for a, b in zip(cuts, [*cuts[1:], len(text)]):
        piece = text[a:b]
        if pieces and not (_WORD.search(piece) and _WORD.search(pieces[-1])):
            pieces[-1] += piece
        else:
            pieces.append(piece)
    return tuple(pieces)


def _split_many(texts: Sequence[str]) -> list[tuple[str, ...]]:
    return [split_sentences(t) for t in texts]


def _cache_path(cache_dir: Path, texts: Sequence[str]) -> Path:
    h = hashlib.sha256(SPLITTER_VERSION.encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)
    return Path(cache_dir) / f"sentences-{h.hexdigest()}.json.gz"


def _read_cache(path: Path, texts: Sequence[str]) -> list[tuple[str, ...]] | None:
    """The cached split (sentence lengths per text), or None if the file is missing or does not fit the texts."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lengths = json.load(f)
    except (OSError, EOFError, zlib.error, ValueError):
        return None
    if not isinstance(lengths, list) or len(lengths) != len(texts):
        return None
    out = []
    for text, ls in zip(texts, lengths):
        ends = list(accumulate(ls))
        if not ends and text or ends and ends[-1] != len(text):
            return None
        out.append(tuple(text[a:b] for a, b in zip([0, *ends], ends)))
    return out


def split_sentences_many(
    texts: Sequence[str],
    *,
    workers: int | None = None,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> list[tuple[str, ...]]:
    """split_sentences of each text, in order; over `workers` processes (default os.cpu_count()) when there
    are enough texts to pay for starting them. cache_dir: the split is stored there (as sentence lengths, under
    a key of SPLITTER_VERSION and all texts) and reused, since pysbd needs about a minute for 3 MB."""
    cache = _cache_path(Path(cache_dir), texts) if cache_dir is not None else None
    if cache is not None and (cached := _read_cache(cache, texts)) is not None:
        return cached
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or len(texts) < _MIN_PARALLEL_TEXTS:
        out = [split_sentences(t) for t in tqdm(texts, desc="sentences", unit="doc", disable=not progress)]
    else:
        size = -(-len(texts) // (workers * 8))
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        # fork on Linux, as in annotate: spawn would re-import the caller's __main__.
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        out = []
        with (
            ProcessPoolExecutor(workers, mp_context=ctx) as pool,
            tqdm(total=len(texts), desc="sentences", unit="doc", disable=not progress) as bar,
        ):
            for result in pool.map(_split_many, chunks):  # map keeps the input order
                out.extend(result)
                bar.update(len(result))
    if cache is not None:
        with (
            atomic_path(cache) as tmp,
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        ):
            gz.write(json.dumps([[len(s) for s in segs] for segs in out]).encode("utf-8"))
    return out
