"""Filtering and conditional training are data transforms: check exactly what they do to documents."""

import random

from prefer.data.annotate import AnnotatedDocument
from prefer.data.transforms import (
    conditional_documents,
    document_score,
    filter_documents,
    tag_segments,
)


def doc(scores, source="a.py"):
    return AnnotatedDocument(
        segments=tuple(f"line {i}\n" for i in range(len(scores))), scores=tuple(scores), source=source
    )


def test_document_score_is_mean_of_segment_scores():
    # (0 + 0.3 + 0.6) / 3 = 0.3
    assert document_score(doc([0.0, 0.3, 0.6])) == 0.3


def test_filter_keeps_documents_at_or_below_threshold():
    clean, borderline, dirty = doc([0.0, 0.0]), doc([0.0, 0.2]), doc([0.5, 0.5])  # means 0, 0.1, 0.5
    assert filter_documents([clean, borderline, dirty], threshold=0.1) == [clean, borderline]


def test_filter_threshold_zero_means_zero():
    # a document whose mean is 1e-9 is not spotless: threshold 0 must drop it
    assert filter_documents([doc([0.0, 2e-9])], threshold=0.0) == []


def test_conditional_tags_every_segment_by_threshold():
    tagged = tag_segments(doc([0.0, 1e-9, 0.5]), threshold=0.0, drop_fraction=0.0, rng=random.Random(0))
    assert tagged.segments == ("<|good|>line 0\n", "<|bad|>line 1\n", "<|bad|>line 2\n")
    assert tagged.scores == (0.0, 1e-9, 0.5)


def test_conditional_drop_fraction_leaves_that_share_untagged():
    documents = [doc([0.0] * 100) for _ in range(50)]
    tagged = conditional_documents(documents, threshold=0.0, drop_fraction=0.1, seed=3)
    untagged = sum(not s.startswith("<|") for d in tagged for s in d.segments)
    assert 400 < untagged < 600  # 5000 segments x 0.1 = 500 expected (binomial sd ~21)
    assert conditional_documents(documents, threshold=0.0, drop_fraction=0.1, seed=3) == tagged  # seeded
    everything = conditional_documents(documents, threshold=0.0, drop_fraction=1.0, seed=3)
    assert [d.segments for d in everything] == [d.segments for d in documents]
