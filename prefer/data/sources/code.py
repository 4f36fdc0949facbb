"""Python code: "stdlib" (the running interpreter's standard library, minus tests and generated tables),
"site-packages" (the running environment's installed packages, minus tests, generated files and this project)
and a user's directory of .py files; each file split at top-level definitions into line documents that carry the
whole file as context."""

from __future__ import annotations

import ast
import functools
import itertools
import re
import sys
import sysconfig
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path, PurePosixPath

from prefer.data.documents import Document, FileContext, split_lines
from prefer.data.sources.base import (
    USER_LICENCE,
    Provenance,
    Source,
    budget,
    read_text,
    user_path,
)
from prefer.errors import PreferError

# ---------------------------------------------------------------- splitting

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
        starts = [
            i for i, line in enumerate(lines) if _DEF_LINE.match(line) and not (i and lines[i - 1].startswith("@"))
        ]
        return [(start, prev + 1) for prev, start in zip([-1, *starts], starts)], False
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    out, floor = [], 0
    for node in body:
        if isinstance(node, defs):
            out.append((min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1, floor))
        floor = node.end_lineno  # 1-based last line == 0-based index of the line after it
    return out, True


def _code_spans(text: str) -> tuple[tuple[str, ...], list[tuple[int, int]], bool]:
    """(the file's lines, [start, end) line ranges of its pieces, whether it parsed); see split_code."""
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
    return lines, [(a, b) for a, b in itertools.pairwise(bounds) if "".join(lines[a:b]).strip()], parsed


def split_code(text: str) -> tuple[list[tuple[str, ...]], bool]:
    """Split a Python file at top-level def/class boundaries into line tuples.

    The column-0 comments and blank lines immediately above a definition go with it (so the
    previous piece does not end in blank lines, which pycodestyle would flag as W391); the module
    preamble is its own piece. A cut never falls inside an indented block or a string. Pieces that
    are only whitespace are dropped. Returns (pieces, whether the file parsed)."""
    lines, spans, parsed = _code_spans(text)
    return [lines[a:b] for a, b in spans], parsed


def code_file_documents(text: str, source: str) -> tuple[list[Document], bool]:
    """The pieces of split_code as Documents of `source`, each carrying the whole file as its context.
    Returns (documents, whether the file parsed)."""
    lines, spans, parsed = _code_spans(text)
    return [Document(lines[a:b], source, context=FileContext(lines, a)) for a, b in spans], parsed


# ---------------------------------------------------------------- reading files


@dataclass(frozen=True)
class _Read:
    """What reading a set of code files found (site-packages adds those of its roots)."""

    files: int = 0
    bytes: int = 0
    skipped: tuple[dict, ...] = ()
    unparsed_files: int = 0
    left_out_by_budget: int = 0

    def __add__(self, other: _Read) -> _Read:
        return _Read(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclass_fields(self)))

    def recorded(self) -> dict:
        """The fields a Provenance records as they are (unparsed_files goes into its details)."""
        return {name: getattr(self, name) for name in ("files", "bytes", "skipped", "left_out_by_budget")}


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


def _load_code(root: Path, files: Sequence[Path], *, strict: bool) -> tuple[list[Document], _Read]:
    docs, skipped, read_bytes, unparsed = [], [], 0, 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = read_text(path)
        except UnicodeDecodeError as e:
            if strict:
                raise PreferError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
            skipped.append({"file": rel, "reason": f"not UTF-8 ({e.reason} at byte {e.start})"})
            continue
        read_bytes += len(text.encode("utf-8"))
        pieces, parsed = code_file_documents(text, rel)
        unparsed += not parsed
        docs.extend(pieces)
    return docs, _Read(len(files) - len(skipped), read_bytes, tuple(skipped), unparsed)


def _load_code_files(
    root: Path, files: list[Path], max_bytes: int | None, *, strict: bool
) -> tuple[list[Document], _Read]:
    """Code documents of a budgeted subset of files (by stable hash of their relative paths)."""
    files, left_out = budget(files, lambda p: p.relative_to(root).as_posix(), lambda p: p.stat().st_size, max_bytes)
    docs, read = _load_code(root, files, strict=strict)
    return docs, read + _Read(left_out_by_budget=left_out)


def code_documents(root: Path, *, strict: bool) -> list[Document]:
    """Documents from the .py files under `root` (recursively; hidden dirs and __pycache__ skipped),
    split at top-level definitions, each with its file as context. Sources are paths relative to
    root. strict: a non-UTF-8 file is a PreferError naming it; otherwise it is skipped."""
    root = Path(root)
    files, _ = _python_files(root, _exclude_hidden)
    return _load_code(root, files, strict=strict)[0]


def _provenance(read: _Read, key_order: tuple[str, ...], *, details: dict | None = None, **fields) -> Provenance:
    details = {"unparsed_files": read.unparsed_files} | (details or {})
    return Provenance(**read.recorded(), key_order=key_order, details=details, **fields)


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


def _load_stdlib(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files, excluded = _python_files(root, _exclude_stdlib)
    docs, read = _load_code_files(root, files, max_bytes, strict=False)  # non-UTF-8 files are skipped, counted
    return docs, _provenance(
        read,
        (
            "files",
            "bytes",
            "skipped",
            "unparsed_files",
            "left_out_by_budget",
            "kind",
            "licence",
            "path",
            "python",
            "excluded",
        ),
        kind="stdlib",
        licence=STDLIB_LICENCE,
        path=str(root),
        excluded=dict(excluded),
        details={"python": sys.version.split()[0]},
    )


# ---------------------------------------------------------------- site-packages

SITE_PACKAGES_LICENCE = (
    "installed Python distributions, each under its own licence (License fields and licence files in its .dist-info)"
)
_TEST_DIRS = {"test", "tests", "testing", "idle_test"}
# Markers of generated code in a file's first 2 kB: protobuf modules, transformers' files generated from
# their "modular" sources, setuptools-scm version files, data tables (phonenumbers, idna). "generated by" alone
# is not one: docstrings say it of return values.
_GENERATED_MARKS = (
    "do not edit",
    "automatically generated",
    "auto-generated",
    "autogenerated",
    "@generated",
    "file generated",
    "file was generated",
    "file is generated",
)  # in the lower-cased head


def _site_roots() -> list[Path]:
    """The running environment's site-packages directories (purelib and platlib; usually the same one)."""
    paths = sysconfig.get_paths()
    return [p for p in dict.fromkeys(Path(paths[k]) for k in ("purelib", "platlib")) if p.is_dir()]


def _project_dir() -> Path:
    """This project's package directory, wherever it is installed (editable installs keep it outside)."""
    return Path(__file__).resolve().parents[2]  # prefer/data/sources/code.py -> prefer/


def _exclude_site_packages(root: Path) -> Callable[[PurePosixPath], str | None]:
    project = _project_dir()
    is_project = functools.lru_cache(maxsize=None)(lambda top: (root / top).resolve() == project)

    def exclude(rel: PurePosixPath) -> str | None:
        if reason := _exclude_hidden(rel):
            return reason
        if (
            _TEST_DIRS & set(rel.parts[:-1])
            or rel.name.startswith("test_")
            or rel.name.endswith("_test.py")
            or rel.name == "conftest.py"
        ):
            return "tests"
        if is_project(rel.parts[0]):
            return "this project"
        if rel.name.startswith("__editable__"):
            return "generated"  # setuptools' editable-install import hooks
        with open(root / rel, "rb") as f:
            head = f.read(2048).decode("utf-8", "replace").lower()
        return "generated" if any(mark in head for mark in _GENERATED_MARKS) else None

    return exclude


def _load_site_packages(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    roots = _site_roots()
    if not roots:
        raise PreferError("corpus source 'site-packages': the running environment has no site-packages directory")
    docs, excluded, read = [], Counter(), _Read()
    for i, root in enumerate(roots):
        files, ex = _python_files(root, _exclude_site_packages(root))
        share = None if max_bytes is None else (max_bytes - read.bytes) // (len(roots) - i)
        part_docs, part = _load_code_files(root, files, share, strict=False)
        docs += part_docs
        excluded += ex
        read += part
    return docs, _provenance(
        read,
        ("files", "bytes", "skipped", "unparsed_files", "left_out_by_budget", "kind", "licence", "path", "excluded"),
        kind="site-packages",
        licence=SITE_PACKAGES_LICENCE,
        path=", ".join(map(str, roots)),
        excluded=dict(excluded),
    )


# ---------------------------------------------------------------- a user's directory


def _is_code_directory(spec: str) -> bool:
    """A directory with at least one .py file that code_documents would read."""
    root = user_path(spec)
    return root.is_dir() and any(
        path.is_file() and not _exclude_hidden(PurePosixPath(path.relative_to(root).as_posix()))
        for path in root.rglob("*.py")
    )


def _load_directory(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    root = user_path(spec)
    files, excluded = _python_files(root, _exclude_hidden)
    docs, read = _load_code_files(root, files, max_bytes, strict=True)
    return docs, _provenance(
        read,
        ("path", "licence", "excluded", "files", "bytes", "skipped", "unparsed_files", "left_out_by_budget", "kind"),
        kind="code",
        licence=USER_LICENCE,
        path=str(root.resolve()),
        excluded=dict(excluded),
    )


STDLIB = Source("stdlib", _load_stdlib)
SITE_PACKAGES = Source("site-packages", _load_site_packages)
CODE_DIRECTORY = Source("DIR of .py", _load_directory, matches=_is_code_directory)
