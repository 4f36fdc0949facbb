"""PEP 8 misalignment: pycodestyle violations per character (lower is better).

pycodestyle runs with its default options (max line length 79, its default ignore list), exactly as
the paper scored code. Texts that are not valid Python are still scored: pycodestyle reports them as
E9xx and keeps counting what it can.

`ruff_score` ("pep8-ruff") counts the same pycodestyle rules (E, W) with ruff, one subprocess per batch of texts.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from bisect import bisect_right
from collections.abc import Sequence
from functools import lru_cache
from itertools import accumulate
from pathlib import Path

import pycodestyle

from prefer.errors import PreferError

# Indentation (E1) and syntax/IO (E9) errors measure whether a model can write Python at all, not
# its style; the prototypes found they are most of a small model's violations.
COMPETENCE_PREFIXES = ("E1", "E9")


class _CollectingReport(pycodestyle.BaseReport):
    """A report that records (line_number, code) per violation and never prints."""

    def init_file(self, filename, lines, expected, line_offset):
        super().init_file(filename, lines, expected, line_offset)
        self.violations: list[tuple[int, str]] = []

    def error(self, line_number, offset, text, check):
        code = super().error(line_number, offset, text, check)
        if code:  # None when the code is ignored by the options or expected
            self.violations.append((line_number, code))
        return code


@lru_cache(maxsize=1)
def _options():
    """pycodestyle's default options, built once per process (it parses option defaults)."""
    return pycodestyle.StyleGuide(quiet=True, reporter=_CollectingReport).options


def physical_lines(text: str) -> list[str]:
    """Split on "\\n" only, keeping it: form feeds and other Unicode line breaks stay inside a line,
    as they do for Python's tokenizer."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def violations(text: str) -> list[tuple[int, str]]:
    """All violations of `text` as (1-based line number, code such as "E225")."""
    lines = physical_lines(text)
    if not lines:
        return []
    options = _options()
    report = _CollectingReport(options)
    checker = pycodestyle.Checker(lines=lines, options=options, report=report)
    try:
        checker.check_all()
    except Exception:
        # pycodestyle itself crashes on some malformed code (IndexError in continued_indentation, PyCQA/pycodestyle
        # #388, #713) — model samples hit it. Keep what it found and count the crash as one E902 (its code for a
        # file it cannot check) at the line it reached, rather than losing the whole evaluation.
        return [*getattr(report, "violations", []), (max(1, checker.line_number), "E902")]
    return report.violations


def _per_char(texts: Sequence[str], keep) -> list[float]:
    return [sum(1 for _, code in violations(t) if keep(code)) / max(1, len(t)) for t in texts]


def score(texts: Sequence[str]) -> list[float]:
    """Per text: number of pycodestyle violations / max(1, number of characters)."""
    return _per_char(texts, lambda code: True)


def style_score(texts: Sequence[str]) -> list[float]:
    """Like `score`, but without E1xx (indentation) and E9xx (syntax) violations."""
    return _per_char(texts, lambda code: not code.startswith(COMPETENCE_PREFIXES))


def score_segments(segments: Sequence[str]) -> list[float]:
    """Per line of ONE document: violations on that line / max(1, len(line)).

    `segments` are the document's lines, each with its trailing "\\n" (the last may lack it).
    pycodestyle runs once on the joined text, because a line checked alone invents indentation
    and blank-line errors. A segment holding several physical lines gets all their violations.
    """
    if not segments:
        return []
    text = "".join(segments)
    seg_starts = list(accumulate((len(s) for s in segments[:-1]), initial=0))
    line_starts = list(accumulate((len(line) for line in physical_lines(text)[:-1]), initial=0))
    # Each physical line belongs to the segment holding its first character (bisect_right - 1
    # skips empty segments, which start where the next one does).
    owner = [bisect_right(seg_starts, start) - 1 for start in line_starts]
    counts = [0] * len(segments)
    for line_number, _ in violations(text):
        # E9xx and W391 may point one past the last line: charge the last line.
        counts[owner[min(max(line_number, 1), len(owner)) - 1]] += 1
    return [c / max(1, len(seg)) for c, seg in zip(counts, segments)]


# pycodestyle's default options in ruff's terms: E and W rules, 79 columns, pycodestyle's default ignore list
# (E121/E123/E126/W503/W504 are not ruff rules; ruff warns that it does not know E704 and goes on). --preview:
# ruff implements most E1/E2/E3 rules only in preview. --isolated: no pyproject/ruff.toml of the caller's tree.
RUFF_ARGS = (
    "check",
    "--isolated",
    "--no-cache",
    "--preview",
    "--no-respect-gitignore",
    "--select",
    "E,W",
    "--ignore",
    "E226,E241,E242,E704",
    "--line-length",
    "79",
    "--output-format",
    "json",
)
# ruff reports a syntax error as one or more "invalid-syntax" diagnostics without a code; they count once per text,
# as pycodestyle's single E901/E902.
RUFF_SYNTAX = "invalid-syntax"


def ruff_binary() -> str:
    """The ruff executable of the `ruff` pip package; PreferError with the pip line when it is missing."""
    try:
        from ruff import find_ruff_bin

        return str(find_ruff_bin())
    except (ImportError, FileNotFoundError):
        raise PreferError("scorer pep8-ruff needs ruff: pip install ruff") from None


def ruff_violations(texts: Sequence[str]) -> list[list[tuple[int, str]]]:
    """Per text: ruff's violations as (1-based row, code such as "E225"), syntax errors once as (row, "invalid-syntax").

    The texts are written to one temporary directory and checked by ONE ruff run (ruff parallelises over files).
    Characters UTF-8 cannot encode (lone surrogates) are written as "?".
    """
    if not texts:
        return []
    width = len(str(len(texts)))
    with tempfile.TemporaryDirectory(prefix="prefer-ruff-") as tmp:
        for i, text in enumerate(texts):
            Path(tmp, f"{i:0{width}d}.py").write_bytes(text.encode("utf-8", errors="replace"))
        run = subprocess.run([ruff_binary(), *RUFF_ARGS, tmp], capture_output=True, text=True)
    if run.returncode not in (0, 1):  # 1: violations found; anything else is ruff failing
        raise PreferError(f"ruff exited {run.returncode}: {run.stderr.strip()[-500:]}")
    out: list[list[tuple[int, str]]] = [[] for _ in texts]
    syntax = [False] * len(texts)
    for d in json.loads(run.stdout or "[]"):
        i = int(Path(d["filename"]).stem)
        row = d["location"]["row"] if d.get("location") else 1
        if d.get("code") is None:  # a syntax error
            if not syntax[i]:
                syntax[i] = True
                out[i].append((row, RUFF_SYNTAX))
        else:
            out[i].append((row, d["code"]))
    return [sorted(v) for v in out]


def ruff_score(texts: Sequence[str]) -> list[float]:
    """Per text: number of ruff E/W violations / max(1, number of characters); see `ruff_violations`."""
    return [len(v) / max(1, len(t)) for v, t in zip(ruff_violations(texts), texts)]
