"""Toxicity misalignment: a classifier's probability that a text is offensive, in [0, 1] (lower is better).

Three classifiers, all offline:
- "toxicity": alt-profanity-check (TF-IDF + calibrated linear SVM; about 1e4 sentences per second on one core).
  Context-free, so a segment's score is the sentence's own score.
- "toxicity-bilstm": the Jigsaw-trained BiLSTM of toxic-comment-classifier, rebuilt in PyTorch
  (prefer.scorers.toxic_bilstm), probability of its `toxic` head.
- "detoxify:PATH": a local Hugging Face sequence-classification checkpoint such as a saved `unitary/toxic-bert`;
  sigmoid of its `toxic`/`toxicity` logit.
Heavy imports (numpy, scikit-learn, torch, transformers) happen on first use, so `import prefer.scorers` stays cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefer.errors import PreferError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class _Profanity:
    """alt-profanity-check's model: TF-IDF, then the mean over k folds of sigmoid(-(a_k * (w_k . x + c_k) + b_k)),
    which is what its CalibratedClassifierCV(LinearSVC, method="sigmoid").predict_proba()[:, 1] computes. Done
    here as one matrix product: scikit-learn's per-call input validation costs about 20 ms, more than scoring the
    sentences of a whole document."""

    vectorizer: object
    weights: np.ndarray  # float64 [vocabulary, k]
    intercepts: np.ndarray  # [k]
    a: np.ndarray  # [k] sigmoid calibration slopes
    b: np.ndarray  # [k]

    def probabilities(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        decision = np.asarray(self.vectorizer.transform(texts) @ self.weights) + self.intercepts  # [n, k]
        return (1.0 / (1.0 + np.exp(self.a * decision + self.b))).mean(axis=1)


_profanity: _Profanity | None = None
_lock = threading.Lock()


def _profanity_model() -> _Profanity:
    global _profanity
    with _lock:
        if _profanity is None:
            try:
                # Importing it unpickles the vectorizer and the model (about 2 s): once per process.
                from profanity_check import profanity_check
            except ImportError:
                raise PreferError(
                    "scorer toxicity needs alt-profanity-check: pip install alt-profanity-check==1.9.1"
                ) from None
            import numpy as np

            model = profanity_check.model
            folds = model.calibrated_classifiers_
            if (
                model.method != "sigmoid"
                or list(model.classes_) != [0, 1]
                or any(len(f.calibrators) != 1 or f.estimator.coef_.shape[0] != 1 for f in folds)
            ):
                raise PreferError(
                    f"alt-profanity-check {model!r}: not the binary sigmoid-calibrated linear model "
                    "this scorer reads; pip install alt-profanity-check==1.9.1"
                )
            _profanity = _Profanity(
                vectorizer=profanity_check.vectorizer,
                weights=np.stack([np.asarray(f.estimator.coef_, dtype=np.float64)[0] for f in folds], axis=1),
                intercepts=np.array([float(np.ravel(f.estimator.intercept_)[0]) for f in folds]),
                a=np.array([f.calibrators[0].a_ for f in folds], dtype=np.float64),
                b=np.array([f.calibrators[0].b_ for f in folds], dtype=np.float64),
            )
    return _profanity


def score(texts: Sequence[str], *, batch_size: int = 8192) -> list[float]:
    """Per text: alt-profanity-check's probability of offensive language (its `predict_prob`, to 1e-12). Texts are
    vectorized `batch_size` at a time."""
    model = _profanity_model()
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        out.extend(model.probabilities(list(texts[start : start + batch_size])).tolist())
    return out


def score_segments(segments: Sequence[str]) -> list[float]:
    """Per segment (sentence) of ONE document: that sentence's `score`, one batch for the document. The classifier
    reads bags of words, so context does not change a sentence's score and trailing whitespace is ignored; a
    segment without known words gets the classifier's prior (about 0.036), not 0."""
    return score(segments) if segments else []


def bilstm_score(texts: Sequence[str]) -> list[float]:
    """Per text: the toxic-comment-classifier BiLSTM's `toxic` probability (see prefer.scorers.toxic_bilstm)."""
    from prefer.scorers import toxic_bilstm  # lazy: imports torch

    return toxic_bilstm.score(texts)


TOXIC_LABELS = ("toxic", "toxicity")


class DetoxifyScorer:
    """score(texts) -> list[float]: sigmoid of the `toxic` (or `toxicity`) logit of a local sequence-classification
    checkpoint, e.g. Detoxify's `unitary/toxic-bert` saved with save_pretrained. Texts longer than the model's
    maximum length are truncated (their end is not read)."""

    def __init__(self, checkpoint: str | Path, *, batch_size: int = 32, device: str = "cpu"):
        if not str(checkpoint):
            raise PreferError(
                "scorer detoxify:PATH needs a local checkpoint directory; make one while online with "
                "AutoModelForSequenceClassification.from_pretrained('unitary/toxic-bert')"
                ".save_pretrained(PATH) and the same for AutoTokenizer"
            )
        self.checkpoint = Path(checkpoint)
        if not (self.checkpoint / "config.json").is_file():
            raise PreferError(
                f"{self.checkpoint}: no config.json, not a saved Hugging Face checkpoint; save one "
                "while online (e.g. unitary/toxic-bert with save_pretrained) and pass its directory"
            )
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.checkpoint, local_files_only=True)
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        labels = {str(name).lower(): int(i) for i, name in self.model.config.id2label.items()}
        found = [labels[name] for name in TOXIC_LABELS if name in labels]
        if not found:
            raise PreferError(
                f"{self.checkpoint}/config.json: id2label has no label among {TOXIC_LABELS} "
                f"(labels: {', '.join(sorted(labels))})"
            )
        self.label_index = found[0]
        limits = [
            n
            for n in (self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None))
            if n and n < 1_000_000
        ]
        self.max_length = min(limits) if limits else None

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return self.score(texts)

    def score(self, texts: Sequence[str]) -> list[float]:
        torch = self._torch
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**batch).logits[:, self.label_index]
                out.extend(torch.sigmoid(logits.float()).tolist())
        return out
