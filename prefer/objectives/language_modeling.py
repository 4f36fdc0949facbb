"""Likelihood objectives: MLE and token-level unlikelihood (Korbak et al. 2023, Sec. 2).

Inputs are already aligned (see ``common.next_token_targets``): ``logits[:, t]`` predicts
``targets[:, t]`` and ``scores[:, t]`` is the misalignment score of ``targets[:, t]``.

MLE also serves filtering and conditional training (they change the data stream, not the
loss), supervised finetuning (mask = response tokens) and the pretraining term of PPO-ptx
(Ouyang et al. 2022, Eq. (2)).
"""

from __future__ import annotations

import math

import torch

from prefer.objectives.common import (
    LossAndStats,
    _logsumexp_into,
    _slabs,
    check_mask,
    check_same_shape,
    masked_mean,
    token_logprobs,
)

__all__ = ["mle_loss", "unlikelihood_loss"]

# 1 - p is clamped to at least this before its log, so -log(1 - p) <= log(1e5) ~ 11.5 and its
# gradient is finite (zero once clamped) even when the model puts p ~ 1 on a bad token.
_MIN_ONE_MINUS_P = 1e-5
_MIN_LOG_ONE_MINUS_P = math.log(_MIN_ONE_MINUS_P)
_LOG_HALF = -math.log(2.0)


def _safe_targets(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace masked-out targets (e.g. -100) by 0 so that gather never reads out of range."""
    return torch.where(mask, targets, torch.zeros((), dtype=targets.dtype, device=targets.device))


def _log_one_minus_p(
    logits: torch.Tensor, targets: torch.Tensor, logp: torch.Tensor, needed: torch.Tensor | None = None
) -> torch.Tensor:
    """log(1 - p_target), clamped to >= log(1e-5).

    For p <= 1/2, ``log1p(-exp(log p))`` (accurate when p is tiny). For p > 1/2, the other tokens' logsumexp minus
    the total logsumexp: 1 - exp(log p) cancels catastrophically there (in float32 log p = -1e-3 carries ~1e-4
    relative error, so log(1 - p) was off by up to 3e-2 nats at 1 - p ~ 1e-3), while the others' mass is computed
    directly to float rounding. The clamp gives a finite loss and a zero gradient when p ~ 1 on a bad token.

    The others' logsumexp is a pass over the vocabulary; it is computed only for the positions that take that
    branch (p > 1/2) and, given `needed` (bool, like `logp`), are needed: elsewhere the result is the first
    branch's, which the caller must not read where `needed` is False.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    from_logp = torch.log1p(-torch.exp(logp.clamp(max=_LOG_HALF)))  # clamped: this branch is unused above 1/2
    near_one = logp > _LOG_HALF
    if needed is not None:
        near_one = near_one & needed
    rows = near_one.nonzero(as_tuple=True)
    if rows[0].numel() == 0:
        return from_logp.clamp(min=_MIN_LOG_ONE_MINUS_P)
    from_others = _OthersLogShare.apply(logits[rows], targets[rows].long())
    return from_logp.index_put(rows, from_others).clamp(min=_MIN_LOG_ONE_MINUS_P)


class _OthersLogShare(torch.autograd.Function):
    """``logsumexp(logits.scatter(-1, targets, -inf)) - logsumexp(logits)``, the log of the other tokens' share,
    with autograd's numbers for that expression in value and gradient, computed slab by slab (no [B, T, V]
    copy with the target masked, no [B, T, V] temporaries; one [B, T, V] gradient)."""

    @staticmethod
    def forward(ctx, logits, targets):
        index = targets.unsqueeze(-1)
        lse_others = torch.empty(targets.shape, dtype=logits.dtype, device=logits.device)
        lse_all = torch.empty_like(lse_others)
        for rows in _slabs(logits):
            others = logits[rows].scatter(-1, index[rows], float("-inf"))
            _logsumexp_into(lse_others[rows], others)
            _logsumexp_into(lse_all[rows], logits[rows])
        ctx.save_for_backward(logits, targets, lse_others, lse_all)
        return lse_others - lse_all

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse_others, lse_all = ctx.saved_tensors
        index = targets.unsqueeze(-1)
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        plus, minus = grad.unsqueeze(-1), (-grad).unsqueeze(-1)
        lse_others, lse_all = lse_others.unsqueeze(-1), lse_all.unsqueeze(-1)
        for rows in _slabs(logits):
            x = logits[rows]
            from_others = x.scatter(-1, index[rows], float("-inf")).sub_(lse_others[rows]).exp_().mul_(plus[rows])
            from_others.scatter_(-1, index[rows], 0.0)  # the masked-out target gets no gradient through `others`
            out = grad_logits[rows]
            torch.sub(x, lse_all[rows], out=out)
            out.exp_().mul_(minus[rows]).add_(from_others)
        return grad_logits, None


def mle_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, num_tokens: float | None = None
) -> LossAndStats:
    """Mean negative log-likelihood over the masked tokens.

    Korbak et al. 2023, Sec. 2 ("MLE"): L_MLE(x) = log pi(x) = sum_i log pi(x^i | x^{<i});
    we minimise its negation, averaged over loss tokens.

    Args:
        logits: [B, T, V].
        targets: [B, T] token ids (anything at masked positions).
        mask: [B, T] bool, True = token in the loss.
        num_tokens: loss tokens in the whole optimizer step (see ``common.masked_mean``).

    Returns:
        ``(loss, stats)``; stats (detached): ``loss``, ``num_tokens`` (this call's count).
    """
    check_mask(mask)
    check_same_shape({"targets": targets, "mask": mask})
    nll = -token_logprobs(logits, _safe_targets(targets, mask))
    loss = masked_mean(nll, mask, num_tokens=num_tokens)
    stats = {"loss": loss.detach(), "num_tokens": mask.sum().float()}
    return loss, stats


def unlikelihood_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    *,
    threshold: float,
    alpha: float,
    num_tokens: float | None = None,
) -> LossAndStats:
    """Token-level unlikelihood: imitate good tokens, push probability away from bad ones.

    Korbak et al. 2023, Sec. 2 ("Unlikelihood", after Welleck et al. 2020), written with
    misalignment scores s = -R (lower is better)::

        loss_t = -log p_t                  if s_t <= threshold   (good)
        loss_t = -alpha * log(1 - p_t)     if s_t >  threshold   (bad)

    averaged over all loss tokens (good and bad both count in the denominator).
    ``threshold`` is a hard, exact cut: with ``threshold=0`` a token scored 1e-9 is bad.
    (The authors' code turned ``threshold=0`` into a soft weight ``1 - s``; we do not.)
    ``log(1 - p)`` is ``log1p(-p)`` for p <= 1/2 and the other tokens' logsumexp minus the
    total logsumexp above (no ``1 - exp(log p)`` cancellation near p = 1), with 1 - p clamped
    to >= 1e-5: accurate in float32 for small p and for p near 1, finite (with a zero
    gradient) when p -> 1.

    Args:
        logits: [B, T, V].
        targets: [B, T].
        mask: [B, T] bool.
        scores: [B, T] float, misalignment score of each target token.
        threshold: tokens with ``score > threshold`` are bad.
        alpha: weight of the unlikelihood term.
        num_tokens: loss tokens in the whole optimizer step.

    Returns:
        ``(loss, stats)``; stats (detached, means over this call's tokens): ``loss``,
        ``good_nll`` (mean -log p over good tokens), ``bad_unlikelihood`` (mean
        -log(1 - p) over bad tokens, before alpha), ``fraction_bad``, ``num_tokens``.
    """
    check_mask(mask)
    check_same_shape({"targets": targets, "mask": mask, "scores": scores})
    safe = _safe_targets(targets, mask)
    logp = token_logprobs(logits, safe)
    bad = mask & (scores > threshold)  # NaN scores compare False; only masked ones may be NaN
    good = mask & ~bad
    neg_log_one_minus_p = -_log_one_minus_p(logits, safe, logp, needed=bad)  # read at bad tokens only
    per_token = torch.where(bad, alpha * neg_log_one_minus_p, -logp)
    loss = masked_mean(per_token, mask, num_tokens=num_tokens)
    stats = {
        "loss": loss.detach(),
        "good_nll": masked_mean(-logp, good).detach(),
        "bad_unlikelihood": masked_mean(neg_log_one_minus_p, bad).detach(),
        "fraction_bad": (bad.sum() / mask.sum().clamp(min=1)).float(),
        "num_tokens": mask.sum().float(),
    }
    return loss, stats
