"""The pretraining objectives of Korbak et al. 2023, one table: name -> what the objective is made of.

Filtering and conditional training are data transforms that feed plain MLE; unlikelihood, RWR and AWR are losses
over per-token scores (AWR with a value head). The pretraining loop reads a spec and never tests a name. Adding an
objective: a row here, its name in `prefer.config.OBJECTIVES` (a test checks they agree), its loss in
`prefer.objectives`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prefer.data.annotate import AnnotatedDocument
from prefer.data.transforms import conditional_documents, filter_documents
from prefer.objectives import awr_loss, mle_loss, rwr_loss, unlikelihood_loss

# (documents, resolved ObjectiveConfig, seed) -> documents
Transform = Callable[[Sequence[AnnotatedDocument], object, int], list[AnnotatedDocument]]
# (logits [B, T, V], targets [B, T], mask [B, T], scores [B, T], values [B, T] | None, *, num_tokens) -> (loss, stats)
Loss = Callable[..., tuple]


@dataclass(frozen=True)
class ObjectiveSpec:
    transform: Transform  # the training documents the objective sees
    make_loss: Callable[[object], Loss]  # resolved ObjectiveConfig -> the loss with its hyperparameters bound
    value_head: bool = False  # trains a scalar value head beside the LM (AWR)
    control_tokens: bool = False  # the model learns `<|good|>`/`<|bad|>` (conditional training)


def _as_is(documents, objective, seed):
    return list(documents)


def _filtering(documents, objective, seed):
    return filter_documents(documents, threshold=objective.filter_threshold)


def _conditional(documents, objective, seed):
    return conditional_documents(
        documents, threshold=objective.threshold, drop_fraction=objective.drop_fraction, seed=seed
    )


def _mle(logits, targets, mask, scores, values, *, num_tokens):
    return mle_loss(logits, targets, mask, num_tokens=num_tokens)


def _ul(logits, targets, mask, scores, values, *, num_tokens, threshold, alpha):
    return unlikelihood_loss(logits, targets, mask, scores, threshold=threshold, alpha=alpha, num_tokens=num_tokens)


def _rwr(logits, targets, mask, scores, values, *, num_tokens, beta):
    return rwr_loss(logits, targets, mask, -scores, beta=beta, num_tokens=num_tokens)  # reward R = -misalignment


def _awr(logits, targets, mask, scores, values, *, num_tokens, alpha, beta):
    return awr_loss(logits, targets, mask, -scores, values, alpha=alpha, beta=beta, num_tokens=num_tokens)


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "mle": ObjectiveSpec(_as_is, lambda o: _mle),
    "filtering": ObjectiveSpec(_filtering, lambda o: _mle),
    "conditional": ObjectiveSpec(_conditional, lambda o: _mle, control_tokens=True),
    "ul": ObjectiveSpec(_as_is, lambda o: functools.partial(_ul, threshold=o.threshold, alpha=o.ul_alpha)),
    "rwr": ObjectiveSpec(_as_is, lambda o: functools.partial(_rwr, beta=o.rwr_beta)),
    "awr": ObjectiveSpec(
        _as_is, lambda o: functools.partial(_awr, alpha=o.awr_alpha, beta=o.awr_beta), value_head=True
    ),
}


def tagged_validation(documents: Sequence[AnnotatedDocument], objective) -> list[AnnotatedDocument] | None:
    """A model that learns the control tokens is also asked about held-out text carrying its true tags (none
    dropped); the tags stay out of the loss. That loss is lower than on plain text because the tags announce what
    follows, so it is reported beside the plain-text loss, never instead of it. Other objectives: None."""
    if not OBJECTIVES[objective.name].control_tokens:
        return None
    return conditional_documents(documents, threshold=objective.threshold, drop_fraction=0.0, seed=0)
