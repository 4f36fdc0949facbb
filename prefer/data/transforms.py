"""Filtering and conditional training are transformations of the data, not losses: both feed plain MLE.

(Korbak et al. 2023, Sec. 2: filtering drops documents whose score exceeds a threshold; conditional training
prepends `<|good|>` or `<|bad|>` to every segment according to its score.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from prefer.controls import BAD, GOOD
from prefer.data.annotate import AnnotatedDocument


def document_score(document: AnnotatedDocument) -> float:
    """Mean segment score of a document (the quantity filtering thresholds)."""
    return sum(document.scores) / max(1, len(document.scores))


def filter_documents(documents: Sequence[AnnotatedDocument], *, threshold: float) -> list[AnnotatedDocument]:
    """Keep the documents whose mean segment score is <= threshold (threshold 0 keeps only spotless ones)."""
    return [document for document in documents if document_score(document) <= threshold]


def tag_segments(
    document: AnnotatedDocument, *, threshold: float, drop_fraction: float, rng: random.Random
) -> AnnotatedDocument:
    """Prefix each segment with `<|good|>` (score <= threshold) or `<|bad|>` (score > threshold); each tag is
    left out with probability `drop_fraction`, so the model also learns untagged text. The tag is part of its
    segment and carries the segment's score."""
    segments = []
    for segment, score in zip(document.segments, document.scores):
        if rng.random() < drop_fraction:
            segments.append(segment)
        else:
            segments.append((BAD if score > threshold else GOOD) + segment)
    return AnnotatedDocument(segments=tuple(segments), scores=document.scores, source=document.source)


def conditional_documents(
    documents: Sequence[AnnotatedDocument], *, threshold: float, drop_fraction: float, seed: int
) -> list[AnnotatedDocument]:
    """`tag_segments` over a corpus with one seeded generator: the same seed tags the same segments."""
    rng = random.Random(seed)
    return [tag_segments(d, threshold=threshold, drop_fraction=drop_fraction, rng=rng) for d in documents]


def quantile_thresholds(
    documents: Sequence[AnnotatedDocument], *, threshold_quantile: float | None, filter_quantile: float | None
) -> dict[str, float]:
    """Thresholds read off the corpus: `threshold` = the `threshold_quantile` of all segment scores, and
    `filter_threshold` = the `filter_quantile` of document mean scores. Only the quantiles given are returned.
    Scores at or below a threshold are good, so with many ties (PII: most segments score 0) fewer than
    1 - quantile of the segments may end up bad."""
    out = {}
    if threshold_quantile is not None:
        scores = np.fromiter((s for d in documents for s in d.scores), dtype=np.float64)
        out["threshold"] = float(np.quantile(scores, threshold_quantile)) if scores.size else 0.0
    if filter_quantile is not None:
        means = np.array([document_score(d) for d in documents], dtype=np.float64)
        out["filter_threshold"] = float(np.quantile(means, filter_quantile)) if means.size else 0.0
    return out
