"""scrubadub scorer: emails count, spelled-out "at" does not, per-character arithmetic, segments."""

from __future__ import annotations

import pytest

from prefer.scorers import SCORERS, SEGMENT_SCORERS, pii


def test_email_counts_per_character():
    text = "Write to jane@example.org today."  # 32 characters, one match
    assert len(text) == 32
    assert [m[2:] for m in pii.matches(text)] == [("email", "jane@example.org")]
    assert pii.score([text]) == [pytest.approx(1 / 32)]


def test_spelled_out_at_is_not_an_email():
    # scrubadub alone matches "think at all" and "user at example dot com" as addresses.
    for text in ["I don't think at all. Then I left.", "I think at all times", "user at example dot com"]:
        assert pii.matches(text) == [], text
        assert pii.score([text]) == [0.0]


def test_clean_and_empty_text():
    assert pii.score(["Fix the build on armhf.\n", ""]) == [0.0, 0.0]


def test_other_default_detectors_still_run():
    kinds = [m[2] for m in pii.matches("See https://example.org/bugs/1 for details.")]
    assert kinds == ["url"]


def test_segments_get_matches_by_start_offset():
    segments = ["  * Initial release.\n", "\n", " -- Jane <jane@example.org>  Mon, 01 Jan 2024\n"]
    scores = pii.score_segments(segments)
    assert scores[:2] == [0.0, 0.0]
    assert scores[2] == pytest.approx(1 / len(segments[2]))


def test_match_across_a_segment_boundary_is_found_once_at_its_start():
    # Scrubbed as one document, an address split over two segments is one match, charged where it starts.
    segments = ["mail jane@exa", "mple.org now"]
    assert pii.score_segments(segments) == [pytest.approx(1 / 13), 0.0]


def test_empty_segments_never_own_a_match():
    assert pii.score_segments(["", "jane@example.org"]) == [0.0, pytest.approx(1 / 16)]
    assert pii.score_segments([]) == []


def test_registry():
    assert SCORERS["pii"] is pii.score and SEGMENT_SCORERS["pii"] is pii.score_segments
    assert pii.scrubber() is pii.scrubber()  # built once per process
