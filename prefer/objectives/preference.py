"""Direct preference losses on K-way rankings: DPO, IPO and listwise (Plackett-Luce) DPO.

A ranking is ONE batch element, as in ``ranking.ranking_loss``: ``[B, K]`` tensors with ``ranks`` (0 = best, equal
ranks = tie) and a ``response_mask`` for prompts with fewer than K responses. Each response enters once, as its
summed log-probability under the policy and under the frozen reference::

    h(y) = log pi_theta(y|x) - log pi_ref(y|x)        (summed over the response tokens)

- DPO (Rafailov et al. 2023, Eq. 7), every non-tied pair w > l of a prompt: ``-log sigma(beta (h_w - h_l))``.
- IPO (Azar et al. 2023, Eq. 17), every non-tied pair: ``(h_w - h_l - 1/(2 tau))^2``.
- Listwise DPO (Rafailov et al. 2023, App. A.3), the Plackett-Luce likelihood of the whole ranking
  ``y_1 > ... > y_K``: ``-sum_k log(exp(beta h_k) / sum_{j >= k} exp(beta h_j))``. With K = 2 it is DPO.

Pairwise losses are normalised per comparison as the reward model is: the mean over a prompt's non-tied pairs, then
the mean over prompts (``num_prompts``: the prompts of the whole optimizer step, for exact accumulation). The
listwise loss is normalised per choice: a prompt's negative log-likelihood divided by its number of choices (K - 1
without ties), so K = 2 gives exactly DPO's number.

Ties: tied responses are never compared with each other. In the listwise loss the choice of response i is made
against itself and the responses ranked strictly below it (its tied peers leave the denominator); a response with
nothing below it makes no choice. Without ties this is exactly Plackett-Luce.

``DPO_LOSSES`` maps a name to its loss and the name of its one hyperparameter (``beta`` or ``tau``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from prefer.objectives.common import (
    LossAndStats,
    check_mask,
    check_positive,
    check_same_shape,
    masked_mean,
    masked_sum,
    zero_outside,
)

__all__ = ["DPO_LOSSES", "PreferenceLoss", "dpo_loss", "ipo_loss", "listwise_dpo_loss"]


def _log_ratios(policy_logps, reference_logps, ranks, response_mask):
    """h [B, K] (zero on padding slots) and the strict-pair mask [B, K, K]: pairs[b, i, j] = i ranked above j."""
    check_mask(response_mask, "response_mask")
    check_same_shape(
        {
            "policy_logps": policy_logps,
            "reference_logps": reference_logps,
            "ranks": ranks,
            "response_mask": response_mask,
        }
    )
    if policy_logps.dim() != 2:
        raise ValueError(f"policy_logps must be [B, K], got {list(policy_logps.shape)}")
    if policy_logps.dtype in (torch.float16, torch.bfloat16):
        policy_logps = policy_logps.float()
    h = zero_outside(policy_logps - reference_logps.detach().to(policy_logps.dtype), response_mask)
    both_real = response_mask.unsqueeze(2) & response_mask.unsqueeze(1)
    pairs = both_real & (ranks.unsqueeze(2) < ranks.unsqueeze(1))
    return h, pairs


def _pairwise(h, pairs, per_pair, *, coef: float, num_prompts):
    """Mean of per_pair [B, K, K] over each prompt's pairs, then over prompts; the logged implicit-reward stats."""
    flat_pairs = pairs.flatten(1)
    pairs_per_prompt = flat_pairs.sum(dim=1)
    has_pairs = pairs_per_prompt > 0
    per_prompt = masked_sum(per_pair.flatten(1), flat_pairs, dim=1) / pairs_per_prompt.clamp(min=1)
    loss = masked_mean(per_prompt, has_pairs, num_tokens=num_prompts)
    return loss, _stats(loss, h, pairs, coef=coef)


def _stats(loss, h, pairs, *, coef: float) -> dict[str, torch.Tensor]:
    """Implicit reward r = coef * h (beta for DPO, tau for IPO): pairwise accuracy (r_w > r_l) and margins."""
    margins = coef * (h.unsqueeze(2) - h.unsqueeze(1)).detach()  # r_i - r_j
    return {
        "loss": loss.detach(),
        "accuracy": masked_mean((margins > 0).to(h.dtype), pairs).detach(),
        "margin_mean": masked_mean(margins, pairs).detach(),
        "num_pairs": pairs.sum().float(),
        "num_prompts": (pairs.flatten(1).sum(dim=1) > 0).sum().float(),
    }


def dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta: float,
    num_prompts: float | None = None,
) -> LossAndStats:
    """DPO over all non-tied pairs of each ranking (one prompt = one batch element)::

        loss(b) = -1/n_b sum_{(w, l): rank_w < rank_l} log sigma(beta (h_w - h_l)),   loss = mean_b loss(b)

    Args:
        policy_logps: [B, K] summed log pi_theta(y_k | x_b) over response tokens, with gradient.
        reference_logps: [B, K] the same under the frozen reference (detached here).
        ranks: [B, K] int, 0 = best; equal = tie (dropped).
        response_mask: [B, K] bool, False = padding slot.
        beta: > 0, the KL-regularisation strength.
        num_prompts: prompts with a non-tied pair in the whole optimizer step; None = this call's.

    Returns:
        ``(loss, stats)``; stats (detached): ``loss``, ``accuracy`` (pairs whose implicit reward beta h orders
        them right), ``margin_mean`` (mean beta (h_w - h_l)), ``num_pairs``, ``num_prompts``.
    """
    check_positive("beta", beta)
    h, pairs = _log_ratios(policy_logps, reference_logps, ranks, response_mask)
    per_pair = -F.logsigmoid(beta * (h.unsqueeze(2) - h.unsqueeze(1)))
    return _pairwise(h, pairs, per_pair, coef=beta, num_prompts=num_prompts)


def ipo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    tau: float,
    num_prompts: float | None = None,
) -> LossAndStats:
    """IPO (Azar et al. 2023) over all non-tied pairs of each ranking, with summed (not length-averaged) h::

        loss(b) = 1/n_b sum_{(w, l)} (h_w - h_l - 1/(2 tau))^2,   loss = mean_b loss(b)

    The minimiser puts every pair's log-ratio margin at 1/(2 tau) whatever the preference's strength, which is
    IPO's guard against DPO's drive to infinite margins on deterministic preferences. Arguments as ``dpo_loss``;
    ``tau`` > 0 (the implicit reward in the stats is tau h).
    """
    check_positive("tau", tau)
    h, pairs = _log_ratios(policy_logps, reference_logps, ranks, response_mask)
    per_pair = (h.unsqueeze(2) - h.unsqueeze(1) - 1.0 / (2.0 * tau)) ** 2
    return _pairwise(h, pairs, per_pair, coef=tau, num_prompts=num_prompts)


def listwise_dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    beta: float,
    num_prompts: float | None = None,
) -> LossAndStats:
    """Plackett-Luce DPO: the negative log-likelihood of each whole ranking under rewards beta h::

        below(i)  = {i} + {j : rank_j > rank_i}         (i's choice: it against everything ranked under it)
        loss(b)   = -1/c_b sum_{i: below(i) != {i}} [beta h_i - logsumexp_{j in below(i)} beta h_j]
        loss      = mean_b loss(b)                      c_b = number of choices of prompt b (K - 1 without ties)

    With K = 2 (one choice) this is exactly ``dpo_loss``. Arguments and stats as ``dpo_loss`` (the stats are the
    pairwise ones, so that the methods log comparable accuracies and margins).
    """
    check_positive("beta", beta)
    h, pairs = _log_ratios(policy_logps, reference_logps, ranks, response_mask)
    below = pairs | torch.diag_embed(response_mask)  # [B, i, j]: j in below(i)
    scores = (beta * h).unsqueeze(1).expand_as(below)  # scores[b, i, j] = beta h_j
    log_denominator = torch.logsumexp(scores.masked_fill(~below, float("-inf")), dim=2)  # [B, K]
    chooses = pairs.any(dim=2)  # i is ranked strictly above some response
    choices_per_prompt = chooses.sum(dim=1)
    per_prompt = masked_sum(log_denominator - beta * h, chooses, dim=1) / choices_per_prompt.clamp(min=1)
    loss = masked_mean(per_prompt, choices_per_prompt > 0, num_tokens=num_prompts)
    return loss, _stats(loss, h, pairs, coef=beta)


class PreferenceLoss(NamedTuple):
    """A preference loss and the name of its one keyword hyperparameter (a field of the stage's `dpo` section)."""

    loss: object
    hyperparameter: str


DPO_LOSSES: dict[str, PreferenceLoss] = {
    "dpo": PreferenceLoss(dpo_loss, "beta"),
    "ipo": PreferenceLoss(ipo_loss, "tau"),
    "listwise": PreferenceLoss(listwise_dpo_loss, "beta"),
}
