"""K-way ranking loss of the InstructGPT reward model (Ouyang et al. 2022, Sec. 3.5, Eq. (1))."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefer.objectives.common import LossAndStats, check_mask, check_same_shape, masked_mean, masked_sum, zero_outside

__all__ = ["ranking_loss"]


def ranking_loss(
    rewards: torch.Tensor, ranks: torch.Tensor, response_mask: torch.Tensor, *, num_prompts: float | None = None
) -> LossAndStats:
    """Pairwise logistic loss over all ranked pairs of each prompt, one prompt = one element.

    Ouyang et al. 2022, Eq. (1)::

        loss(b) = -1/n_b * sum_{(w, l): rank_w < rank_l} log sigmoid(r_b,w - r_b,l)
        loss    = mean over prompts b with n_b > 0 of loss(b)

    All C(K, 2) comparisons of one prompt form one batch element, and each response is
    scored once (``rewards`` holds one scalar per response). ``n_b`` counts the non-tied
    pairs of prompt b; tied pairs are dropped (the paper's C(K, 2) when there are no ties).
    A prompt without any valid pair contributes nothing and is not counted in the mean.
    Vectorised through [B, K, K] pair masks.

    Args:
        rewards: [B, K] float, r(x_b, y_b,k) with gradient; padding slots may hold anything.
        ranks: [B, K] int, 0 = best; equal ranks = tie.
        response_mask: [B, K] bool, False = padding slot (prompts have K_b = 2..K responses).
        num_prompts: denominator for gradient accumulation: the number of prompts with at
            least one valid pair in the whole optimizer step. ``None`` = those of this call.

    Returns:
        ``(loss, stats)``; stats (detached, pooled over this call): ``loss``, ``accuracy``
        (fraction of pairs with r_w > r_l), ``reward_mean`` (over real responses),
        ``margin_mean`` (mean r_w - r_l over pairs), ``num_pairs``, ``num_prompts``.
    """
    check_mask(response_mask, "response_mask")
    check_same_shape({"rewards": rewards, "ranks": ranks, "response_mask": response_mask})
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, K], got {list(rewards.shape)}")
    if rewards.dtype in (torch.float16, torch.bfloat16):
        rewards = rewards.float()
    r = zero_outside(rewards, response_mask)  # padding garbage (even NaN) never enters
    # pairs[b, i, j]: response i is ranked strictly better than response j (both real).
    both_real = response_mask.unsqueeze(2) & response_mask.unsqueeze(1)
    pairs = (both_real & (ranks.unsqueeze(2) < ranks.unsqueeze(1))).flatten(1)  # [B, K*K]
    margins = (r.unsqueeze(2) - r.unsqueeze(1)).flatten(1)  # r_i - r_j
    pairs_per_prompt = pairs.sum(dim=1)  # n_b
    has_pairs = pairs_per_prompt > 0
    per_prompt = masked_sum(-F.logsigmoid(margins), pairs, dim=1) / pairs_per_prompt.clamp(min=1)
    loss = masked_mean(per_prompt, has_pairs, num_tokens=num_prompts)

    num_pairs = pairs.sum()
    stats = {
        "loss": loss.detach(),
        "accuracy": masked_mean((margins > 0).to(r.dtype), pairs).detach(),
        "reward_mean": masked_mean(r, response_mask).detach(),
        "margin_mean": masked_mean(margins, pairs).detach(),
        "num_pairs": num_pairs.float(),
        "num_prompts": has_pairs.sum().float(),
    }
    return loss, stats
