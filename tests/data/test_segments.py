"""Sentence segmentation of prose: pysbd's boundaries as exact cuts of the text, the cache, the process pool."""

from __future__ import annotations

import pytest

from prefer.data import segments as segments_mod
from prefer.data.segments import split_sentences, split_sentences_many


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello there. How are you?\nI am fine.", ("Hello there. ", "How are you?\n", "I am fine.")),
        # A wrapped line does not end a sentence; the period after it does.
        ("This is a long\nsentence. Next one.", ("This is a long\nsentence. ", "Next one.")),
        # An abbreviation does not end one.
        ("Dr. Smith arrived. He sat.", ("Dr. Smith arrived. ", "He sat.")),
        # A blank line ends one even without punctuation.
        ("Para one ends here\n\nPara two. Yes.\n", ("Para one ends here\n\n", "Para two. ", "Yes.\n")),
        # Repeated sentences are cut where they are, not at their first occurrence.
        ("Yes. Yes. Yes.", ("Yes. ", "Yes. ", "Yes.")),
        # Whitespace before the first sentence goes with it.
        ("  Lead. x", ("  Lead. ", "x")),
        ("", ()),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_closing_quotes_stay_with_their_sentence():
    # pysbd starts the next sentence with the quote that closes this one; the cut moves past it.
    text = 'He sucked the poison from the wound."\n\t"What?" she said.\n'
    assert split_sentences(text) == ('He sucked the poison from the wound."\n\t', '"What?" she said.\n')
    # An opening quote after a space is the next sentence's.
    assert split_sentences('He left. "Bye," she said.') == ("He left. ", '"Bye," she said.')


def test_pieces_without_words_join_a_sentence():
    assert split_sentences("Stop. ... Go.") == ("Stop. ... ", "Go.")


def test_sentences_always_concatenate_to_the_text():
    texts = [
        '\t"...A strange enigma is man!"\n\t"Someone calls him a soul," I said.\n\t\t-- Holmes\n',
        "e.g. this (and that). 3.14 is pi! Is it?  Yes...\n\n\n  Indented.\n",
        "No punctuation at all",
        "\n\n\n",
        "Mr. and Mrs. Smith went to Washington D.C. on Jan. 5th. Then home.",
    ]
    for text in texts:
        assert "".join(split_sentences(text)) == text


def test_many_uses_the_cache(tmp_path, monkeypatch):
    texts = ["One. Two.", "Three. Four. Five.", ""]
    first = split_sentences_many(texts, cache_dir=tmp_path, workers=1)
    assert first == [split_sentences(t) for t in texts]
    [cache] = tmp_path.iterdir()

    def fail(text):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(segments_mod, "split_sentences", fail)
    assert split_sentences_many(texts, cache_dir=tmp_path, workers=1) == first
    # Other texts miss the cache; a damaged cache file is recomputed.
    with pytest.raises(AssertionError):
        split_sentences_many(["Other. Text."], cache_dir=tmp_path, workers=1)
    monkeypatch.undo()
    cache.write_bytes(b"garbage")
    assert split_sentences_many(texts, cache_dir=tmp_path, workers=1) == first


def test_process_pool_gives_the_serial_result(monkeypatch):
    monkeypatch.setattr(segments_mod, "_MIN_PARALLEL_TEXTS", 2)
    texts = [f"Sentence {i}. Another one {i}? Yes." for i in range(20)]
    assert split_sentences_many(texts, workers=2) == [split_sentences(t) for t in texts]
