"""What every corpus source shares: the `Source` it is registered as, the `Provenance` it reports, the byte budget,
and reading files."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prefer.data.documents import Document, stable_hash
from prefer.data.segments import split_sentences_many

USER_LICENCE = "user-supplied: see the files' own licences"
# The fields every source reports, in the order of a source that has no reason to differ.
COMMON_FIELDS = ("kind", "licence", "path", "files", "bytes", "skipped", "left_out_by_budget", "excluded")


@dataclass(frozen=True)
class Provenance:
    """Where a source's documents came from and what was left out, as every run's data.json records it.

    kind: the source family; licence: the terms of the texts; path: where they were read; files: files (or
    records) read; bytes: their size; skipped: {"file", "reason"} per unreadable file; left_out_by_budget: files
    (or records) that did not fit max_bytes; excluded: count per exclusion rule. `details`: fields only this
    source has (the python version, unparsed files, fortune collections, ...). `key_order`: the key order of
    to_dict(); each source keeps the order its data.json has always had, so files written before and after
    compare equal byte for byte."""

    kind: str
    licence: str
    path: str
    files: int
    bytes: int
    skipped: tuple[Mapping[str, str], ...] = ()
    left_out_by_budget: int = 0
    excluded: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, object] = field(default_factory=dict)
    key_order: tuple[str, ...] = field(default=COMMON_FIELDS, compare=False, repr=False)

    def __post_init__(self) -> None:
        clash = set(COMMON_FIELDS) & set(self.details)
        if clash or sorted(self.key_order) != sorted((*COMMON_FIELDS, *self.details)):
            raise ValueError(
                f"Provenance of {self.kind!r}: key_order {self.key_order} does not list each of the "
                f"common fields and details {sorted(self.details)} once"
            )

    def to_dict(self) -> dict:
        """The JSON record: plain dicts and lists, keys in `key_order`."""
        values = {
            "kind": self.kind,
            "licence": self.licence,
            "path": self.path,
            "files": self.files,
            "bytes": self.bytes,
            "skipped": [dict(s) for s in self.skipped],
            "left_out_by_budget": self.left_out_by_budget,
            "excluded": dict(self.excluded),
        } | dict(self.details)
        return {key: values[key] for key in self.key_order}


@dataclass(frozen=True)
class Source:
    """A corpus source as `data.source` names it. `build(spec, max_bytes, sentence_cache)` returns its documents
    and provenance: spec is what the user wrote, max_bytes the budget (see `budget`), sentence_cache where prose
    caches its sentence split (None: no cache). `matches`: for a source named by a pattern (hf:NAME, a
    directory, a file), whether a spec is one; None: the spec must equal `name`."""

    name: str  # "stdlib", or a pattern for the user: "hf:NAME[:SPLIT]", "DIR of .py", "FILE.jsonl"
    build: Callable[[str, int | None, Path | None], tuple[list[Document], Provenance]]
    matches: Callable[[str], bool] | None = None

    def accepts(self, spec: str) -> bool:
        return self.matches(spec) if self.matches is not None else spec == self.name


def budget(items: Iterable, key: Callable, size: Callable, max_bytes: int | None) -> tuple[list, int]:
    """A deterministic subset within max_bytes: items in order of stable_hash(key(item)), each taken
    if it still fits. Returns (chosen items in their input order, number left out)."""
    items = list(items)
    if max_bytes is None:
        return items, 0
    chosen, used = set(), 0
    for i in sorted(range(len(items)), key=lambda i: stable_hash(key(items[i]))):
        s = size(items[i])
        if used + s <= max_bytes:
            chosen.add(i)
            used += s
    return [x for i, x in enumerate(items) if i in chosen], len(items) - len(chosen)


def gzip_size(path: Path) -> int:
    """Uncompressed size from the gzip trailer (ISIZE, exact below 4 GiB), without decompressing."""
    with open(path, "rb") as f:
        f.seek(-4, 2)
        return int.from_bytes(f.read(4), "little")


def utf8_size(doc: Document) -> int:
    return len(doc.text.encode("utf-8"))


def read_text(path: Path) -> str:
    """UTF-8 text with newlines normalised to "\\n"; UnicodeDecodeError if not UTF-8."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def user_path(spec: str) -> Path:
    """The file or directory a user's spec names."""
    return Path(spec).expanduser()


def is_user_file(spec: str, suffix: str) -> bool:
    """Whether spec names an existing file (not a directory) ending in suffix."""
    path = user_path(spec)
    return path.suffix == suffix and path.exists() and not path.is_dir()


def prose_documents(
    texts: list[tuple[str, str]], max_bytes: int | None, cache_dir: Path | None
) -> tuple[list[Document], int]:
    """Budgeted (source, text) pairs as sentence-segmented documents; returns (documents, left out)."""
    texts, left_out = budget(texts, lambda t: t[0], lambda t: len(t[1].encode("utf-8")), max_bytes)
    sentences = split_sentences_many([t for _, t in texts], progress=len(texts) > 5_000, cache_dir=cache_dir)
    return [Document(segs, source) for (source, _), segs in zip(texts, sentences)], left_out
