"""A user's .jsonl file: one document per record {"text": str, "source": str (optional)}, segments its lines."""

from __future__ import annotations

from pathlib import Path

from prefer.data.documents import Document, split_lines
from prefer.data.formats import read_records
from prefer.data.sources.base import (
    USER_LICENCE,
    Provenance,
    Source,
    budget,
    is_user_file,
    user_path,
    utf8_size,
)
from prefer.errors import PreferError


def jsonl_documents(path: Path) -> list[Document]:
    """One document per non-blank line {"text": str, "source": str (optional)}; segments are the
    lines of the text. The source defaults to "<file name>:<line>", so records split individually.
    Records with empty text are dropped."""
    path = Path(path)
    docs = []
    for where, record in read_records(path, {"text": str}):
        source = record.get("source", f"{path.name}:{where.rsplit(':', 1)[1]}")
        if not isinstance(source, str):
            raise PreferError(f"{where}: field 'source' must be a string")
        if record["text"]:
            docs.append(Document(split_lines(record["text"]), source))
    return docs


def _load_jsonl(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    path = user_path(spec)
    docs, left_out = budget(jsonl_documents(path), lambda d: d.source, utf8_size, max_bytes)
    return docs, Provenance(
        kind="jsonl",
        licence=USER_LICENCE,
        path=str(path.resolve()),
        files=1,
        bytes=sum(map(utf8_size, docs)),
        skipped=(),
        left_out_by_budget=left_out,
        excluded={},
        key_order=("path", "licence", "excluded", "kind", "files", "bytes", "skipped", "left_out_by_budget"),
    )


JSONL = Source("FILE.jsonl", _load_jsonl, matches=lambda s: is_user_file(s, ".jsonl"))
