"""Python metadata ("python-metadata"): the core metadata (METADATA / PKG-INFO) of every installed Python
distribution, one document of lines each; it names authors and maintainers with their emails (the PII task)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from prefer.data.documents import Document, split_lines
from prefer.data.sources.base import Provenance, Source, budget

PYTHON_METADATA_LICENCE = (
    "core metadata (METADATA / PKG-INFO) of installed Python distributions, each under "
    "its distribution's licence; they name authors and maintainers with emails"
)


def _load_python_metadata(
    spec: str, max_bytes: int | None, cache_dir: Path | None
) -> tuple[list[Document], Provenance]:
    """One document per installed distribution (the first of a name on sys.path, as imports see it)."""
    texts, seen, skipped = [], set(), []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        key = re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalisation
        if not key or key in seen:
            continue
        seen.add(key)
        source = f"{name}-{dist.version}/METADATA"
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
        if text is None:
            skipped.append({"file": source, "reason": "no METADATA or PKG-INFO"})
            continue
        texts.append((source, text.replace("\r\n", "\n")))
    texts.sort()
    texts, left_out = budget(texts, lambda t: t[0], lambda t: len(t[1].encode("utf-8")), max_bytes)
    docs = [Document(split_lines(text), source) for source, text in texts if text]
    return docs, Provenance(
        kind="python-metadata",
        licence=PYTHON_METADATA_LICENCE,
        path="importlib.metadata",
        files=len(texts),
        bytes=sum(len(t.encode("utf-8")) for _, t in texts),
        skipped=tuple(skipped),
        left_out_by_budget=left_out,
        excluded={},
    )


PYTHON_METADATA = Source("python-metadata", _load_python_metadata)
