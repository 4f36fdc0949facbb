"""Corpora as documents split into segments (lines), with a provenance record.

Sources (`load_documents`): "stdlib" (the running interpreter's standard library, minus tests and
generated tables), "changelogs" (the machine's Debian changelogs, one document per entry), a
directory of .py files, a directory or a .gz file of Debian changelogs, or a .jsonl file.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import re
import sys
import sysconfig
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from prefer.data.formats import read_records
from prefer.errors import PreferError


@dataclass(frozen=True)
class Document:
    """One document. `segments` concatenate exactly to its text; for code and changelogs each segment
    is one line with its trailing newline. `source` is the file it came from: provenance, and the
    unit of the train/validation split."""

    segments: tuple[str, ...]
    source: str

    @property
    def text(self) -> str:
        return "".join(self.segments)


def split_lines(text: str) -> tuple[str, ...]:
    """Lines of `text`, each with its trailing "\\n" (the last may lack one). Only "\\n" splits:
    form feeds and other Unicode line breaks stay inside a line, as for Python's tokenizer."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return tuple(lines)


def stable_hash(*parts: object) -> float:
    """A number in [0, 1) from sha256 of the parts: the same on every machine and every run
    (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# ---------------------------------------------------------------- code

# Column-0 lines that may open a top-level definition (used when a file does not parse).
_DEF_LINE = re.compile(r"(?:async\s+def|def|class)\s|@")


def _definition_starts(lines: Sequence[str], text: str) -> tuple[list[tuple[int, int]], bool]:
    """(first line, floor) per top-level def/class, 0-based: the first line counts decorators; the
    floor is the line after the previous top-level statement, so attaching comments above never
    reaches into it. Also whether the file parsed: unparseable files (newer syntax, broken code)
    fall back to a column-0 line pattern, with the previous definition's first line as floor."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences etc. in old code
            body = ast.parse(text).body
    except (SyntaxError, ValueError):
        starts = [i for i, line in enumerate(lines)
                  if _DEF_LINE.match(line) and not (i and lines[i - 1].startswith("@"))]
        return [(start, prev + 1) for prev, start in zip([-1, *starts], starts)], False
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    out, floor = [], 0
    for node in body:
        if isinstance(node, defs):
            out.append((min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1, floor))
        floor = node.end_lineno  # 1-based last line == 0-based index of the line after it
    return out, True


def split_code(text: str) -> tuple[list[tuple[str, ...]], bool]:
    """Split a Python file at top-level def/class boundaries into line tuples.

    The column-0 comments and blank lines immediately above a definition go with it (so the
    previous piece does not end in blank lines, which pycodestyle would flag as W391); the module
    preamble is its own piece. A cut never falls inside an indented block or a string. Pieces that
    are only whitespace are dropped. Returns (pieces, whether the file parsed)."""
    lines = split_lines(text)
    starts, parsed = _definition_starts(lines, text)
    cuts = []
    for start, floor in starts:
        cut = start
        while cut > floor and (not lines[cut - 1].strip() or lines[cut - 1].startswith("#")):
            cut -= 1
        if cut > 0:
            cuts.append(cut)
    bounds = [0, *cuts, len(lines)]
    pieces = [lines[a:b] for a, b in zip(bounds, bounds[1:])]
    return [p for p in pieces if "".join(p).strip()], parsed


def _read_text(path: Path) -> str:
    """UTF-8 text with newlines normalised to "\\n"; UnicodeDecodeError if not UTF-8."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def _python_files(root: Path, exclude: Callable[[PurePosixPath], str | None]) -> tuple[list[Path], Counter]:
    """.py files under root in sorted order, minus excluded ones (counted by reason)."""
    files, excluded = [], Counter()
    for path in sorted(root.rglob("*.py")):
        if not path.is_file():
            continue
        reason = exclude(PurePosixPath(path.relative_to(root).as_posix()))
        if reason:
            excluded[reason] += 1
        else:
            files.append(path)
    return files, excluded


def _exclude_hidden(rel: PurePosixPath) -> str | None:
    if "__pycache__" in rel.parts:
        return "__pycache__"
    if any(p.startswith(".") for p in rel.parts[:-1]):
        return "hidden directory"
    return None


def _load_code(root: Path, files: Sequence[Path], *, strict: bool) -> tuple[list[Document], dict]:
    docs, skipped, read_bytes, unparsed = [], [], 0, 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = _read_text(path)
        except UnicodeDecodeError as e:
            if strict:
                raise PreferError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
            skipped.append({"file": rel, "reason": f"not UTF-8 ({e.reason} at byte {e.start})"})
            continue
        read_bytes += len(text.encode("utf-8"))
        pieces, parsed = split_code(text)
        unparsed += not parsed
        docs.extend(Document(piece, rel) for piece in pieces)
    info = {"files": len(files) - len(skipped), "bytes": read_bytes, "skipped": skipped,
            "unparsed_files": unparsed}
    return docs, info


def code_documents(root: Path, *, strict: bool) -> list[Document]:
    """Documents from the .py files under `root` (recursively; hidden dirs and __pycache__ skipped),
    split at top-level definitions. Sources are paths relative to root. strict: a non-UTF-8 file is
    a PreferError naming it; otherwise it is skipped."""
    root = Path(root)
    files, _ = _python_files(root, _exclude_hidden)
    return _load_code(root, files, strict=strict)[0]


# ---------------------------------------------------------------- stdlib

STDLIB_LICENCE = "Python Software Foundation License (PSF-2.0): the running interpreter's standard library"

# Generated tables, not written code: codec maps (most of the prototype's bad lines), pydoc's
# topic dump, and the tables below. Found by ranking files by pycodestyle violations: the
# codec maps run at ~0.02 violations/char (E262), stringprep at 0.067 (E231), against 0.0015 for
# the rest. locale.py and mimetypes.py have big hand-kept tables and stay.
_GENERATED_DIRS = {"encodings", "pydoc_data"}
_GENERATED_FILES = {
    "html/entities.py",  # HTML5 entity table
    "stringprep.py",  # generated by mkstringprep.py from Unicode data
    "re/_casefix.py",  # generated by Tools/build/generate_re_casefix.py
}


def _exclude_stdlib(rel: PurePosixPath) -> str | None:
    if {"site-packages", "dist-packages"} & set(rel.parts):
        return "site-packages"
    if {"test", "tests", "idle_test"} & set(rel.parts[:-1]):
        return "tests"
    if rel.parts[0] in _GENERATED_DIRS or str(rel) in _GENERATED_FILES:
        return "generated table"
    if rel.name.startswith("_sysconfigdata_"):
        return "build configuration"  # a dict dumped at build time; machine-specific paths
    return _exclude_hidden(rel)


# ---------------------------------------------------------------- changelogs

CHANGELOG_LICENCE = ("Debian changelogs of installed packages, each under its package's licence "
                     "(/usr/share/doc/<package>/copyright); they name maintainers and their emails")
_ENTRY_HEADER = re.compile(r"[a-z0-9][a-z0-9+.~-]* \([^()\s]+\)")  # pkg (1.2-3) unstable; urgency=low
_ENTRY_TRAILER = re.compile(r" -- \S")  # " -- Name <email>  Mon, 01 Jan 2024 00:00:00 +0000"


def split_changelog(text: str) -> tuple[list[tuple[str, ...]], int]:
    """Entries of a Debian changelog as line tuples, header to maintainer trailer inclusive (the
    trailer is the PII the task is about). Returns (entries, lines outside any entry); those are
    blank separators and free-form notes such as emacs variables, and are dropped."""
    entries, current, outside = [], None, 0
    for line in split_lines(text):
        if _ENTRY_HEADER.match(line):
            if current:
                entries.append(tuple(current))  # an entry with no trailer ends at the next header
            current = [line]
        elif current is not None:
            current.append(line)
            if _ENTRY_TRAILER.match(line):
                entries.append(tuple(current))
                current = None
        else:
            outside += 1
    if current:
        entries.append(tuple(current))
    return entries, outside


def _changelog_source(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"  # the package directory names the source


def _load_changelogs(paths: Sequence[Path], *, strict: bool) -> tuple[list[Document], dict]:
    docs, skipped, read_bytes, outside, seen = [], [], 0, 0, set()
    for path in paths:
        source = _changelog_source(path)
        real = path.resolve()  # /usr/share/doc has symlinked package directories
        if real in seen:
            skipped.append({"file": source, "reason": f"same file as {real}"})
            continue
        seen.add(real)
        try:
            text = _read_text(path)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            if strict:
                raise PreferError(f"{path}: cannot read as a gzip UTF-8 changelog: {e}") from None
            skipped.append({"file": source, "reason": f"{type(e).__name__}: {e}"})
            continue
        read_bytes += len(text.encode("utf-8"))
        entries, n_outside = split_changelog(text)
        outside += n_outside
        docs.extend(Document(entry, source) for entry in entries)
    info = {"files": len(paths) - len(skipped), "bytes": read_bytes, "skipped": skipped,
            "lines_outside_entries": outside}
    return docs, info


def changelog_documents(paths: Sequence[Path]) -> list[Document]:
    """One document per changelog entry of each gzip Debian changelog; segments are lines, the
    source is "<package dir>/<file name>". A file that is not gzip UTF-8 is a PreferError."""
    return _load_changelogs([Path(p) for p in paths], strict=True)[0]


DEBIAN_DOC = Path("/usr/share/doc")


def _system_changelogs() -> list[Path]:
    paths = sorted(DEBIAN_DOC.glob("*/changelog.Debian.gz"))
    if not paths:
        raise PreferError(f"no Debian changelogs on this machine ({DEBIAN_DOC}/*/changelog.Debian.gz "
                          "matched nothing); give a directory or .gz of changelogs, or use another task")
    return paths


# ---------------------------------------------------------------- jsonl


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


# ---------------------------------------------------------------- loading

D = TypeVar("D")


def _budget(items: Iterable, key: Callable, size: Callable, max_bytes: int | None) -> tuple[list, int]:
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


def _gzip_size(path: Path) -> int:
    """Uncompressed size from the gzip trailer (ISIZE, exact below 4 GiB), without decompressing."""
    with open(path, "rb") as f:
        f.seek(-4, 2)
        return int.from_bytes(f.read(4), "little")


def _utf8_size(doc: Document) -> int:
    return len(doc.text.encode("utf-8"))


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


def load_documents(source: str, *, max_bytes: int | None = None) -> tuple[list[Document], dict]:
    """Documents of a corpus and its provenance.

    source: "stdlib", "changelogs", a directory (.py files; or changelog*.gz files if it has no
    .py), a .jsonl file or a .gz changelog. max_bytes: a subset of whole files (records for
    JSONL) of at most this many bytes (uncompressed), chosen by a stable hash of their paths, so a budget gives
    a representative mix that is the same on every machine with the same files. Exactly repeated
    documents are dropped. Provenance keys: source, kind, licence, path, files, bytes, documents,
    document_bytes, segments, max_bytes, left_out_by_budget, excluded (count per rule), skipped (file and reason),
    duplicate_documents, and kind-specific counts.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise PreferError(f"max_bytes must be positive, got {max_bytes}")
    prov: dict = {"source": source, "max_bytes": max_bytes}
    excluded: Counter = Counter()
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files, excluded = _python_files(root, _exclude_stdlib)
        prov |= {"kind": "stdlib", "licence": STDLIB_LICENCE, "path": str(root), "python": sys.version.split()[0]}
        kind = "code"
    elif source == "changelogs":
        root, files = DEBIAN_DOC, _system_changelogs()
        prov |= {"kind": "changelogs", "licence": CHANGELOG_LICENCE, "path": str(DEBIAN_DOC)}
        kind = "changelogs"
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise PreferError(f"corpus source {source!r}: no such file or directory (expected 'stdlib', "
                              "'changelogs', a directory, a .jsonl file or a .gz changelog)")
        prov |= {"path": str(root.resolve())}
        if root.is_dir():
            files, excluded = _python_files(root, _exclude_hidden)
            kind = "code"
            if not files:
                files, kind = sorted(p for p in root.rglob("changelog*.gz") if p.is_file()), "changelogs"
            prov |= {"kind": kind, "licence": "user-supplied: see the files' own licences"}
        elif root.suffix == ".gz":
            files, kind = [root], "changelogs"
            prov |= {"kind": kind, "licence": "user-supplied: see the file's licence"}
        elif root.suffix == ".jsonl":
            files, kind = [root], "jsonl"
            prov |= {"kind": kind, "licence": "user-supplied: see the file's licence"}
        else:
            raise PreferError(f"corpus source {source!r}: unsupported file type (expected a directory, "
                              "a .jsonl file or a .gz changelog)")
        root = root if root.is_dir() else root.parent

    left_out = 0
    if kind == "code":
        files, left_out = _budget(files, lambda p: p.relative_to(root).as_posix(),
                                  lambda p: p.stat().st_size, max_bytes)
        # The stdlib skips and counts non-UTF-8 files; a user's directory must be clean.
        docs, info = _load_code(root, files, strict=source != "stdlib")
    elif kind == "changelogs":
        files, left_out = _budget(files, _changelog_source, _gzip_size, max_bytes)
        docs, info = _load_changelogs(files, strict=source != "changelogs")
    else:
        docs, left_out = _budget(jsonl_documents(files[0]), lambda d: d.source, _utf8_size, max_bytes)
        info = {"files": 1, "bytes": sum(map(_utf8_size, docs)), "skipped": []}
    docs, duplicates = dedupe(docs)
    if not docs:
        raise PreferError(f"corpus source {source!r}: no documents"
                          + (f" within max_bytes={max_bytes}" if left_out else ""))
    prov |= info | {"documents": len(docs), "document_bytes": sum(map(_utf8_size, docs)),
                    "segments": sum(len(d.segments) for d in docs),
                    "duplicate_documents": duplicates, "left_out_by_budget": left_out,
                    "excluded": dict(sorted(excluded.items()))}
    return docs, prov


def split_by_source(documents: Sequence[D], *, validation_fraction: float,
                    seed: int = 0) -> tuple[list[D], list[D]]:
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
