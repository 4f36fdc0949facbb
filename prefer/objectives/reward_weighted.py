"""Offline-RL objectives of PHF: reward- and advantage-weighted regression.

Korbak et al. 2023, Sec. 2 ("RWR", "AWR").

Inputs are aligned as in ``language_modeling``: ``logits[:, t]`` predicts ``targets[:, t]``,
``rewards[:, t]`` is the reward of ``targets[:, t]`` (callers pass R = -score) and
``values[:, t]`` is the value head's estimate V(prefix) read from the hidden state that
predicts ``targets[:, t]`` (i.e. the model's ``values[:, :-1]`` when the targets are
``input_ids[:, 1:]``).
"""

from __future__ import annotations

import math

import torch

from prefer.objectives.common import (
    LossAndStats,
    check_mask,
    check_positive,
    check_same_shape,
    masked_mean,
    token_logprobs,
    zero_outside,
)

__all__ = ["awr_loss", "rwr_loss"]


def rwr_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    *,
    beta: float,
    num_tokens: float | None = None,
) -> LossAndStats:
    """Reward-weighted regression: NLL of each token weighted by ``exp(R / beta)``.

    Korbak et al. 2023, Sec. 2 ("RWR", after Peters & Schaal 2007):
    L_RWR(x) = sum_i log pi(x^i | x^{<i}) exp(R(x^i) / beta); we minimise
    ``masked_mean(-log p * exp(R / beta))``. No value head (the authors' code carried one that
    never trained). ``beta -> inf`` recovers MLE. The weights are constants (no gradient).

    Args:
        logits: [B, T, V].
        targets: [B, T].
        mask: [B, T] bool.
        rewards: [B, T] per-token reward R = -score (<= 0 for PHF scores, so weights <= 1).
        beta: temperature > 0 (``float('inf')`` allowed: plain MLE).
        num_tokens: loss tokens in the whole optimizer step.

    Returns:
        ``(loss, stats)``; stats (detached, over this call's tokens): ``loss``,
        ``nll`` (unweighted mean NLL), ``mean_weight``, ``num_tokens``.
    """
    check_mask(mask)
    check_same_shape({"targets": targets, "mask": mask, "rewards": rewards})
    check_positive("beta", beta)
    nll = -token_logprobs(logits, zero_outside(targets, mask))
    weights = torch.exp(zero_outside(rewards.detach().to(nll.dtype), mask) / beta)
    loss = masked_mean(weights * nll, mask, num_tokens=num_tokens)
    stats = {
        "loss": loss.detach(),
        "nll": masked_mean(nll, mask).detach(),
        "mean_weight": masked_mean(weights, mask).detach(),
        "num_tokens": mask.sum().float(),
    }
    return loss, stats


def awr_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    max_weight: float = 1000.0,
    num_tokens: float | None = None,
) -> LossAndStats:
    """Advantage-weighted regression with a jointly trained scalar value head.

    Korbak et al. 2023, Sec. 2 ("AWR", after Peng et al. 2019)::

        A_t = R_t - stopgrad(V_t)
        w_t = min(exp(A_t / beta), max_weight)            (constant, no gradient)
        loss = alpha * masked_mean(w * NLL) + (1 - alpha) * masked_mean((V - R)^2)

    The LM term trains only the LM (weights are detached); the value term trains only V.
    With ``alpha = 1`` the value head receives exactly zero gradient.

    Args:
        logits: [B, T, V].
        targets: [B, T].
        mask: [B, T] bool.
        rewards: [B, T] per-token reward R = -score.
        values: [B, T] V(prefix) predicting each target token, with gradient.
        alpha: mixing weight of the LM term, in [0, 1].
        beta: temperature > 0.
        max_weight: clamp of the weights (the paper's 1000).
        num_tokens: loss tokens in the whole optimizer step (both terms use it).

    Returns:
        ``(loss, stats)``; stats (detached): ``loss``, ``lm_loss`` (weighted NLL term, before
        alpha), ``value_loss`` (before 1 - alpha), ``nll`` (unweighted, this call),
        ``mean_weight``, ``weight_clip_fraction``, ``advantage_mean``, ``value_mean``,
        ``num_tokens``.
    """
    check_mask(mask)
    check_same_shape({"targets": targets, "mask": mask, "rewards": rewards, "values": values})
    check_positive("beta", beta)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    nll = -token_logprobs(logits, zero_outside(targets, mask))
    r = zero_outside(rewards.detach().to(nll.dtype), mask)
    v = zero_outside(values.to(nll.dtype), mask)
    advantages = r - v.detach()
    # min(exp(a), m) == exp(min(a, log m)); the second form never overflows to inf.
    log_weights = advantages / beta
    weights = torch.exp(log_weights.clamp(max=math.log(max_weight)))
    lm_loss = masked_mean(weights * nll, mask, num_tokens=num_tokens)
    value_loss = masked_mean((v - r) ** 2, mask, num_tokens=num_tokens)
    loss = alpha * lm_loss + (1.0 - alpha) * value_loss
    stats = {
        "loss": loss.detach(),
        "lm_loss": lm_loss.detach(),
        "value_loss": value_loss.detach(),
        "nll": masked_mean(nll, mask).detach(),
        "mean_weight": masked_mean(weights, mask).detach(),
        "weight_clip_fraction": masked_mean((log_weights >= math.log(max_weight)).float(), mask).detach(),
        "advantage_mean": masked_mean(advantages, mask).detach(),
        "value_mean": masked_mean(v, mask).detach(),
        "num_tokens": mask.sum().float(),
    }
    return loss, stats
