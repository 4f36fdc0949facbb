"""Debian packaging texts, which name maintainers and authors with their emails (the PII task): "changelogs" (one
document per changelog entry, from /usr/share/doc/*/changelog.Debian.gz, a user's directory of changelog*.gz or
one .gz changelog) and "copyrights" (one document per stanza of /usr/share/doc/*/copyright)."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

from prefer.data.documents import Document, split_lines
from prefer.data.sources.base import (
    USER_LICENCE,
    Provenance,
    Source,
    budget,
    gzip_size,
    is_user_file,
    read_text,
    user_path,
)
from prefer.errors import PreferError

DEBIAN_DOC = Path("/usr/share/doc")

# ---------------------------------------------------------------- changelogs

CHANGELOG_LICENCE = (
    "Debian changelogs of installed packages, each under its package's licence "
    "(/usr/share/doc/<package>/copyright); they name maintainers and their emails"
)
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


def _package_source(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"  # the package directory names the source


def _load_changelogs(paths: Sequence[Path], *, strict: bool) -> tuple[list[Document], int, int, list[dict], int]:
    """(documents, files read, their bytes, skipped files, lines outside entries)."""
    docs, skipped, read_bytes, outside, seen = [], [], 0, 0, set()
    for path in paths:
        source = _package_source(path)
        real = path.resolve()  # /usr/share/doc has symlinked package directories
        if real in seen:
            skipped.append({"file": source, "reason": f"same file as {real}"})
            continue
        seen.add(real)
        try:
            text = read_text(path)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            if strict:
                raise PreferError(f"{path}: cannot read as a gzip UTF-8 changelog: {e}") from None
            skipped.append({"file": source, "reason": f"{type(e).__name__}: {e}"})
            continue
        read_bytes += len(text.encode("utf-8"))
        entries, n_outside = split_changelog(text)
        outside += n_outside
        docs.extend(Document(entry, source) for entry in entries)
    return docs, len(paths) - len(skipped), read_bytes, skipped, outside


def changelog_documents(paths: Sequence[Path]) -> list[Document]:
    """One document per changelog entry of each gzip Debian changelog; segments are lines, the
    source is "<package dir>/<file name>". A file that is not gzip UTF-8 is a PreferError."""
    return _load_changelogs([Path(p) for p in paths], strict=True)[0]


def _changelog_provenance(
    paths: list[Path], max_bytes: int | None, *, strict: bool, licence: str, path: str, key_order: tuple[str, ...]
) -> tuple[list[Document], Provenance]:
    paths, left_out = budget(paths, _package_source, gzip_size, max_bytes)
    docs, files, read_bytes, skipped, outside = _load_changelogs(paths, strict=strict)
    return docs, Provenance(
        kind="changelogs",
        licence=licence,
        path=path,
        files=files,
        bytes=read_bytes,
        skipped=tuple(skipped),
        left_out_by_budget=left_out,
        excluded={},
        details={"lines_outside_entries": outside},
        key_order=key_order,
    )


def _load_system_changelogs(
    spec: str, max_bytes: int | None, cache_dir: Path | None
) -> tuple[list[Document], Provenance]:
    paths = sorted(DEBIAN_DOC.glob("*/changelog.Debian.gz"))
    if not paths:
        raise PreferError(
            f"no Debian changelogs on this machine ({DEBIAN_DOC}/*/changelog.Debian.gz "
            "matched nothing); give a directory or .gz of changelogs, or use another task"
        )
    return _changelog_provenance(
        paths,
        max_bytes,
        strict=False,
        licence=CHANGELOG_LICENCE,
        path=str(DEBIAN_DOC),
        key_order=(
            "files",
            "bytes",
            "skipped",
            "lines_outside_entries",
            "kind",
            "licence",
            "path",
            "left_out_by_budget",
            "excluded",
        ),
    )


def _load_user_changelogs(
    spec: str, max_bytes: int | None, cache_dir: Path | None
) -> tuple[list[Document], Provenance]:
    """A directory's changelog*.gz files (recursively), or one .gz changelog; unreadable ones are errors."""
    root = user_path(spec)
    paths = sorted(p for p in root.rglob("changelog*.gz") if p.is_file()) if root.is_dir() else [root]
    return _changelog_provenance(
        paths,
        max_bytes,
        strict=True,
        licence=USER_LICENCE,
        path=str(root.resolve()),
        key_order=(
            "path",
            "licence",
            "excluded",
            "files",
            "bytes",
            "skipped",
            "lines_outside_entries",
            "kind",
            "left_out_by_budget",
        ),
    )


# ---------------------------------------------------------------- copyrights

COPYRIGHT_LICENCE = (
    "Debian copyright files of installed packages (/usr/share/doc/<package>/copyright): "
    "copyright notices naming authors and maintainers, often with emails, and licence texts"
)


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


def _load_copyrights(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    paths = sorted(p for p in DEBIAN_DOC.glob("*/copyright") if p.is_file())
    if not paths:
        raise PreferError(f"no Debian copyright files on this machine ({DEBIAN_DOC}/*/copyright matched nothing)")
    paths, left_out = budget(paths, _package_source, lambda p: p.stat().st_size, max_bytes)
    docs, skipped, read_bytes, seen = [], [], 0, set()
    for path in paths:
        source, real = _package_source(path), path.resolve()
        if real in seen:  # symlinked package directories share one file
            skipped.append({"file": source, "reason": f"same file as {real}"})
            continue
        seen.add(real)
        try:
            text = read_text(path)
        except (OSError, UnicodeDecodeError) as e:
            skipped.append({"file": source, "reason": f"{type(e).__name__}: {e}"})
            continue
        read_bytes += len(text.encode("utf-8"))
        docs.extend(Document(stanza, source) for stanza in split_stanzas(text))
    return docs, Provenance(
        kind="copyrights",
        licence=COPYRIGHT_LICENCE,
        path=str(DEBIAN_DOC),
        files=len(paths) - len(skipped),
        bytes=read_bytes,
        skipped=tuple(skipped),
        left_out_by_budget=left_out,
        excluded={},
    )


CHANGELOGS = Source("changelogs", _load_system_changelogs)
COPYRIGHTS = Source("copyrights", _load_copyrights)
# A directory with no .py files is read as changelogs (after CODE_DIRECTORY in the dispatch order).
CHANGELOG_DIRECTORY = Source("DIR of changelog*.gz", _load_user_changelogs, matches=lambda s: user_path(s).is_dir())
CHANGELOG_FILE = Source("FILE.gz (a Debian changelog)", _load_user_changelogs, matches=lambda s: is_user_file(s, ".gz"))
