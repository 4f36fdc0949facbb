"""Critic-free policy gradients over groups of K samples per prompt: RLOO and GRPO.

Rewards come as ``[G, K]``: G prompts, K sampled responses each. No value model: the baseline of a response is
computed from the other responses to the same prompt.

- RLOO (Ahmadian et al. 2024): ``A_i = r_i - mean_{j != i} r_j``, REINFORCE on the whole response
  (``rloo_loss``); the KL penalty is folded into r as in PPO (``r = score - beta sum_t (log pi - log pi_ref)``).
- GRPO (Shao et al. 2024, Eq. 3): ``A_i = (r_i - mean(r)) / std(r)`` over the prompt's group (``std`` with
  Bessel's correction, as the DeepSeekMath code; ``scale=False`` drops it as Dr. GRPO does), PPO's clipped ratio
  per token, and the KL to the reference as a loss term with the k3 estimator per token
  ``pi_ref/pi - log(pi_ref/pi) - 1`` (``grpo_loss``). Each response's token losses are averaged over its own
  length (1/|o_i|, as in the paper; Dr. GRPO drops that too), then over responses.

Sequence-level losses take ``num_sequences``, the responses of the whole optimizer step, so that gradient
accumulation over micro-batches and ranks is exact.
"""

from __future__ import annotations

import torch

from prefer.objectives.common import LossAndStats, check_mask, check_same_shape, masked_mean, masked_sum, zero_outside
from prefer.objectives.ppo import clipped_surrogate

__all__ = ["grpo_advantages", "grpo_loss", "k3_kl", "rloo_advantages", "rloo_loss"]


def _check_groups(rewards: torch.Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [G, K] with K >= 2 samples per prompt, got {list(rewards.shape)}")


def _sequences(advantages: torch.Tensor, mask: torch.Tensor, num_sequences: float | None) -> float:
    """N, the responses of the whole optimizer step (``num_sequences``, or this call's B), after checking that
    ``advantages`` holds one value per response row of ``mask`` [B, T]."""
    if advantages.shape != mask.shape[:1]:
        raise ValueError(f"advantages must be [B] = {list(mask.shape[:1])}, got {list(advantages.shape)}")
    denominator = len(mask) if num_sequences is None else num_sequences
    if float(denominator) <= 0:
        raise ValueError(f"num_sequences must be > 0, got {float(denominator)}")
    return denominator


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages [G, K]: ``A_i = r_i - 1/(K-1) sum_{j != i} r_j = K/(K-1) (r_i - mean_j r_j)``.

    Args:
        rewards: [G, K] (K >= 2) episode rewards, the KL penalty already folded in. Detached.
    """
    _check_groups(rewards)
    r = rewards.detach().float()
    k = r.shape[1]
    return r - (r.sum(dim=1, keepdim=True) - r) / (k - 1)


def grpo_advantages(rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages [G, K]: ``(r_i - mean(r)) / (std(r) + eps)`` per prompt (Shao et al. 2024, Sec.
    4.1.2; std with Bessel's correction). ``scale=False``: ``r_i - mean(r)`` only (Dr. GRPO). A group whose rewards
    are all equal gets advantages 0: it carries no signal.

    Args:
        rewards: [G, K] (K >= 2) scores, without any KL term (GRPO puts the KL in the loss). Detached.
    """
    _check_groups(rewards)
    r = rewards.detach().float()
    centred = r - r.mean(dim=1, keepdim=True)
    return centred / (r.std(dim=1, keepdim=True) + eps) if scale else centred


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) on samples of pi (Schulman 2020; Shao et al. 2024, Eq. 4)::

    k3 = exp(ref - logp) - (ref - logp) - 1   >= 0, unbiased, and 0 exactly where pi = pi_ref.
    """
    log_ratio = ref_logprobs.detach().to(logprobs.dtype) - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    kl_coef: float,
    num_sequences: float | None = None,
) -> LossAndStats:
    """GRPO's objective, negated for minimisation (Shao et al. 2024, Eq. 3)::

        ratio_t = exp(logp_t - old_t)
        l_t     = -min(ratio_t A, clip(ratio_t, 1 - eps, 1 + eps) A) + kl_coef * k3_t
        loss    = 1/N sum_i 1/|o_i| sum_{t in o_i} l_t

    Args:
        logprobs: [B, T] current policy log-probs of the response tokens, with gradient.
        old_logprobs: [B, T] at sampling time (detached here).
        ref_logprobs: [B, T] under the frozen reference (detached here).
        advantages: [B] one advantage per response (``grpo_advantages``, flattened); detached.
        mask: [B, T] bool, response tokens (every row has at least one).
        clip_range: epsilon, e.g. 0.2.
        kl_coef: beta >= 0 of the k3 term.
        num_sequences: N, responses in the whole optimizer step; None = B.

    Returns:
        ``(loss, stats)``; stats (detached, over this call): ``loss``, ``policy_loss`` and ``kl_loss`` (the two
        terms, each normalised like the loss), ``kl`` (mean over responses of the summed k3: nats per response),
        ``clip_fraction`` (tokens where the clipped term is active), ``ratio_mean``.
    """
    check_mask(mask)
    check_same_shape({"logprobs": logprobs, "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs, "mask": mask})
    denominator = _sequences(advantages, mask, num_sequences)
    log_ratio = zero_outside(logprobs - old_logprobs.detach().to(logprobs.dtype), mask)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(ratio.dtype).unsqueeze(1)
    policy_terms, clip_active = clipped_surrogate(ratio, adv, clip_range=clip_range)
    kl_terms = zero_outside(k3_kl(logprobs, ref_logprobs), mask)
    lengths = mask.sum(dim=1).clamp(min=1).to(logprobs.dtype)
    policy_loss = (masked_sum(policy_terms, mask, dim=1) / lengths).sum() / denominator
    kl_loss = kl_coef * (masked_sum(kl_terms, mask, dim=1) / lengths).sum() / denominator
    loss = policy_loss + kl_loss
    stats = {
        "loss": loss.detach(),
        "policy_loss": policy_loss.detach(),
        "kl_loss": kl_loss.detach(),
        "kl": masked_sum(kl_terms.detach(), mask, dim=1).mean(),
        "clip_fraction": masked_mean(clip_active.to(ratio.dtype), mask).detach(),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return loss, stats


def rloo_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_sequences: float | None = None,
    old_logprobs: torch.Tensor | None = None,
    clip_range: float | None = None,
) -> LossAndStats:
    """REINFORCE with the leave-one-out baseline on the whole response (Ahmadian et al. 2024, Eq. 6)::

        loss = -1/N sum_i w_i A_i * sum_{t in o_i} logp_t

    On-policy (the first optimizer step after sampling, `old_logprobs` None) w_i = 1: plain REINFORCE. A later
    minibatch of the same batch was sampled by an older policy: with `old_logprobs` and `clip_range`, w_i is the
    sequence-level importance ratio rho_i = exp(sum_t logp_t - old_logp_t), detached, and 0 where PPO's clip stops
    the gradient (A_i > 0 and rho_i > 1 + eps, or A_i < 0 and rho_i < 1 - eps). The gradient is then exactly that of
    the clipped surrogate -min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i) (Schulman et al. 2017, Eq. 7, with the
    ratio of whole responses, as RLOO's reward is per response), while the loss keeps REINFORCE's value.

    Args:
        logprobs: [B, T] current policy log-probs of the response tokens, with gradient.
        advantages: [B] (``rloo_advantages``, flattened); detached.
        mask: [B, T] bool, response tokens.
        num_sequences: N, responses in the whole optimizer step; None = B.
        old_logprobs: [B, T] the sampling policy's log-probs; None = on-policy (w = 1).
        clip_range: eps of the ratio clip (required with `old_logprobs`).

    Returns:
        ``(loss, stats)``; stats: ``loss``, ``logprob_mean`` (mean summed log-prob of a response), and with
        `old_logprobs` ``ratio_mean`` (of rho) and ``clip_fraction`` (responses whose gradient the clip stops).
    """
    check_mask(mask)
    check_same_shape({"logprobs": logprobs, "mask": mask})
    denominator = _sequences(advantages, mask, num_sequences)
    sequence_logprobs = masked_sum(logprobs, mask, dim=1)  # [B]
    adv = advantages.detach().to(sequence_logprobs.dtype)
    stats: dict[str, torch.Tensor] = {}
    if old_logprobs is not None:
        if clip_range is None or clip_range <= 0:
            raise ValueError("rloo_loss: old_logprobs needs a clip_range > 0")
        check_same_shape({"logprobs": logprobs, "old_logprobs": old_logprobs})
        old = masked_sum(old_logprobs.detach().to(sequence_logprobs.dtype), mask, dim=1)
        ratio = torch.exp(sequence_logprobs.detach() - old)  # [B]
        stopped = ((adv > 0) & (ratio > 1 + clip_range)) | ((adv < 0) & (ratio < 1 - clip_range))
        adv = adv * torch.where(stopped, torch.zeros_like(ratio), ratio)
        stats = {"ratio_mean": ratio.mean(), "clip_fraction": stopped.to(ratio.dtype).mean()}
    loss = -(adv * sequence_logprobs).sum() / denominator
    return loss, {"loss": loss.detach(), "logprob_mean": sequence_logprobs.detach().mean(), **stats}
