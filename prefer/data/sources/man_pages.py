"""Manual pages ("man-pages"): the machine's English pages (/usr/share/man/man*/*.gz), rendered from man(7) roff
to plain text here (no groff needed), one prose document per page, split into sentences."""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from pathlib import Path

from prefer.data.documents import Document
from prefer.data.sources.base import (
    Provenance,
    Source,
    budget,
    gzip_size,
    prose_documents,
    utf8_size,
)
from prefer.errors import PreferError

MAN_DIR = Path("/usr/share/man")
MAN_LICENCE = (
    "manual pages of installed packages, each under its package's licence (/usr/share/doc/<package>/copyright)"
)
# roff special characters (\(xx, \[xx]) and strings (\*(xx) that carry text; the others print nothing here.
_ROFF_CHARS = {
    "em": "\u2014",
    "en": "\u2013",
    "hy": "-",
    "mi": "-",
    "aq": "'",
    "dq": '"',
    "lq": "\u201c",
    "rq": "\u201d",
    "oq": "\u2018",
    "cq": "\u2019",
    "bu": "\u2022",
    "co": "\u00a9",
    "rg": "\u00ae",
    "tm": "\u2122",
    "ti": "~",
    "ha": "^",
    "rs": "\\",
    "sl": "/",
    "pl": "+",
    "eq": "=",
    "mu": "\u00d7",
    "de": "\u00b0",
    "ga": "`",
    "aa": "\u00b4",
    "at": "@",
    "sh": "#",
    "Do": "$",
    "->": "\u2192",
    "<-": "\u2190",
    "R": "\u00ae",
    "Tm": "\u2122",
    "ba": "|",
    "or": "|",
    "lB": "[",
    "rB": "]",
    "lC": "{",
    "rC": "}",
    "la": "\u27e8",
    "ra": "\u27e9",
    "fm": "\u2032",
    "sc": "\u00a7",
}
_ROFF_SIMPLE = {"e": "\\", "\\": "\\", "-": "-", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": "."}
_ROFF_ESCAPE = re.compile(
    r"""\\(?:
      (?P<font>f(?:\[[^\]]*\]|\(..|.))
    | s[+-]?(?:\[[^\]]*\]|\(..|'[^']*'|\d\d?)
    | \((?P<char2>..)
    | \[(?P<charn>[^\]]*)\]
    | \*(?:\((?P<str2>..)|\[(?P<strn>[^\]]*)\]|(?P<str1>.))
    | [nkgmMFYV](?:\(..|\[[^\]]*\]|.)
    | [hvwlLbDoxXNZRAC]'[^']*'
    | (?P<other>.)
    )""",
    re.VERBOSE,
)
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
            args = [
                _roff_inline(m[1].replace('""', '"') if m[1] is not None else m[2]) for m in _ROFF_ARG.finditer(rest)
            ]
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


def _load_man_pages(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    # English pages only: translations live in /usr/share/man/<language>/.
    paths, excluded = [], Counter()
    for path in sorted(MAN_DIR.glob("man[1-9]*/*.gz")):
        if path.is_symlink():
            excluded["symlink (another name of a page)"] += 1
        elif path.is_file():
            paths.append(path)
    if not paths:
        raise PreferError(f"no manual pages on this machine ({MAN_DIR}/man*/*.gz matched nothing)")
    paths, left_out = budget(paths, lambda p: p.relative_to(MAN_DIR).as_posix(), gzip_size, max_bytes)
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
    docs, _ = prose_documents(texts, None, cache_dir)
    return docs, Provenance(
        kind="man-pages",
        licence=MAN_LICENCE,
        path=str(MAN_DIR),
        files=len(texts),
        bytes=read_bytes,
        skipped=tuple(skipped),
        left_out_by_budget=left_out,
        excluded=dict(excluded),
        details={"rendered_bytes": sum(map(utf8_size, docs))},
        key_order=(
            "kind",
            "licence",
            "path",
            "files",
            "bytes",
            "rendered_bytes",
            "skipped",
            "left_out_by_budget",
            "excluded",
        ),
    )


MAN_PAGES = Source("man-pages", _load_man_pages)
