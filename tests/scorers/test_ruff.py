"""ruff scorer (pep8-ruff): the same codes as pycodestyle on hand-written code, the same ranking on the stdlib."""

from __future__ import annotations

import sysconfig
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from prefer.scorers import SCORER_VERSIONS, SCORERS, get_scorer, pep8

SNIPPETS = {
    "x=1\n": {"E225"},  # missing whitespace around operator
    "import os\ndef f():\n    return os\n": {"E302"},  # expected 2 blank lines
    "x = 1 \n": {"W291"},  # trailing whitespace
    "x = '" + "a" * 80 + "'\n": {"E501"},  # 86 > 79 characters
}


def test_ruff_and_pycodestyle_find_the_same_codes_on_snippets():
    found = pep8.ruff_violations(list(SNIPPETS))
    for (text, codes), ruff_found in zip(SNIPPETS.items(), found):
        assert {code for _, code in ruff_found} == codes, text
        assert {code for _, code in pep8.violations(text)} == codes, text


def test_per_character_score_and_rows():
    assert pep8.ruff_violations(["import os\ndef f():\n    x=1 \n    return x\n"]) == [
        [(2, "E302"), (3, "E225"), (3, "W291")]
    ]
    assert pep8.ruff_score(["x=1\n", "x = 1\n", ""]) == [pytest.approx(1 / 4), 0.0, 0.0]
    assert pep8.ruff_score([]) == []


def test_default_ignore_list_applies():
    # E226 (missing whitespace around arithmetic operator) is in pycodestyle's default ignore list.
    assert pep8.ruff_violations(["y = 1\nx = y*2\n"]) == [[]]


def test_a_syntax_error_counts_once():
    # ruff reports two invalid-syntax diagnostics here (bad parameter, unexpected EOF); pycodestyle one E901.
    [found] = pep8.ruff_violations(["def f(:\n  x$ = (\n"])
    assert found == [(1, pep8.RUFF_SYNTAX)]


def test_texts_are_checked_in_isolation_and_keep_their_order():
    texts = ["x = 1\n"] * 11 + ["x=1\n"]  # 12 files: names must sort and map back correctly past 10
    assert pep8.ruff_score(texts) == [0.0] * 11 + [pytest.approx(1 / 4)]


def _ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing their mean rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):
        ranks[x == value] = ranks[x == value].mean()
    return ranks


def test_ruff_ranks_stdlib_files_like_pycodestyle():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if 2_000 <= p.stat().st_size <= 30_000)
    chosen = files[:: max(1, len(files) // 40)][:40]
    assert len(chosen) >= 30, f"only {len(chosen)} stdlib files under {stdlib}"
    texts = [p.read_text(encoding="utf-8") for p in chosen]
    ours, theirs = np.array(pep8.ruff_score(texts)), np.array(pep8.score(texts))
    rho = np.corrcoef(_ranks(ours), _ranks(theirs))[0, 1]
    assert rho > 0.7, f"Spearman rho {rho:.3f} between ruff and pycodestyle per-char scores on {len(texts)} files"


def test_registry():
    assert SCORERS["pep8-ruff"] is pep8.ruff_score and get_scorer("pep8-ruff") is pep8.ruff_score
    assert SCORER_VERSIONS["pep8-ruff"] == f"1-ruff{version('ruff')}"
