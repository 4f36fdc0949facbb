"""pycodestyle scorer: counts on hand-written code, the style-only variant, line attribution."""

from __future__ import annotations

import pytest

from prefer.errors import PreferError
from prefer.scorers import (
    SCORER_VERSIONS,
    SCORERS,
    SEGMENT_SCORERS,
    get_scorer,
    get_segment_scorer,
    pep8,
)


def test_clean_code_scores_zero():
    assert pep8.score(["def f(a):\n    return a + 1\n"]) == [0.0]


def test_missing_whitespace_around_operator_is_one_violation_per_char():
    # "x=1\n": one E225 in 4 characters.
    assert pep8.violations("x=1\n") == [(1, "E225")]
    assert pep8.score(["x=1\n"]) == [pytest.approx(1 / 4)]


def test_empty_text_scores_zero_without_dividing_by_zero():
    assert pep8.score([""]) == [0.0]


def test_invalid_python_is_still_scored():
    [(line, code)] = pep8.violations("def f(:\n")
    assert code.startswith("E9")
    assert pep8.score(["def f(:\n"])[0] > 0


def test_default_ignore_list_applies():
    # E226 (missing whitespace around arithmetic operator) is in pycodestyle's default ignore list.
    assert pep8.violations("y = 1\nx = y*2\n") == []


def test_style_score_ignores_indentation_but_not_style():
    bad_indent = "def f():\n   return 1\n"  # E111: indentation not a multiple of four
    assert pep8.violations(bad_indent) == [(2, "E111")]
    assert pep8.score([bad_indent])[0] > 0
    assert pep8.style_score([bad_indent]) == [0.0]
    assert pep8.style_score(["x=1\n"]) == [pytest.approx(1 / 4)]


def test_segment_scores_attribute_violations_to_their_lines():
    lines = ["import os\n", "def f():\n", "    x=1\n", "    return x\n"]
    # E302 (expected 2 blank lines) on line 2, E225 on line 3.
    assert pep8.score_segments(lines) == [0.0, pytest.approx(1 / 9), pytest.approx(1 / 8), 0.0]


def test_segments_are_scored_in_context_not_alone():
    # Alone, an indented line is an unexpected-indentation error; in its function it is fine.
    lines = ["def f():\n", "    return 1\n"]
    assert pep8.score(["    return 1\n"])[0] > 0
    assert pep8.score_segments(lines) == [0.0, 0.0]


def test_segment_past_the_end_violations_charge_the_last_line():
    # W391 (blank line at end of file) points at the trailing blank line.
    assert pep8.score_segments(["x = 1\n", "\n"]) == [0.0, 1.0]
    assert pep8.score_segments([]) == []


def test_registry():
    assert SCORERS["pep8"] is pep8.score and SCORERS["pep8-style"] is pep8.style_score
    assert SEGMENT_SCORERS["pep8"] is pep8.score_segments
    assert get_scorer("pep8-style") is pep8.style_score
    assert get_segment_scorer("pep8") is pep8.score_segments
    assert set(SCORER_VERSIONS) >= set(SCORERS) | set(SEGMENT_SCORERS)
    with pytest.raises(PreferError, match=r"'sentiment'.*pep8.*pii"):
        get_scorer("sentiment")
    with pytest.raises(PreferError, match="pep8-style"):
        get_segment_scorer("pep8-style")  # no segment variant


def test_pycodestyle_crash_counts_as_one_error_instead_of_raising():
    # A sample of the PEP8 demo's MLE model on which pycodestyle 2.15 raises IndexError in continued_indentation.
    crasher = (
        ".name)\n    def no file is self._line_names,\n        if _main(self):\n        self._state)\n"
        "        self._stack(self):\n\n    def_]\n\n    def __ KeyError:\n            # set_t, "
        'self._append(self):\n        """\n    def __init(self.add_key_set_hostname(self, self.append(self.\n'
        "        return _http_call(self):\n        if data\nclassError(None):\n        if self.append(self):\n"
        '            else:\n            if not self.append(self, self._path._file(self):\n        if """'
    )
    found = pep8.violations(crasher)
    assert found[-1][1] == "E902" and len(found) >= 2  # what it found before crashing, plus the crash
    assert pep8.score([crasher])[0] == len(found) / len(crasher)
