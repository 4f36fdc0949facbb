"""PPO pieces of InstructGPT (Ouyang et al. 2022, Sec. 3.5 "Reinforcement learning (RL)").

All tensors are over RESPONSE positions: ``mask`` [B, T] bool marks the response tokens of each
row (right-padded; rows may have different lengths; a row may also start with False prompt
positions, but its True positions must be one contiguous block). ``logprobs[:, t]`` is
log pi(response token t | prompt, earlier response tokens), computed with
``common.token_logprobs(..., temperature=<sampling temperature>)``.

One PPO step, put together by the trainer::

    rewards, kl_stats = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=beta)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    advantages = whiten(advantages, mask)            # over the whole rollout batch
    # per minibatch (old_* from the rollout, new ones recomputed with gradient):
    pg_loss, pg_stats = ppo_policy_loss(new_logprobs, logprobs, advantages, mask, clip_range=0.2)
    vf_loss, vf_stats = ppo_value_loss(new_values, values, returns, mask, clip_range=0.2)
    loss = pg_loss + vf_coef * vf_loss
    # PPO-ptx (Ouyang et al. 2022, Eq. (2), the term gamma * E_pretrain[log pi(x)]): there is no
    # separate ptx loss. Add ``ptx_coef * mle_loss(...)[0]`` computed on a pretraining batch
    # (``prefer.objectives.language_modeling.mle_loss``); minimising ptx_coef * mean NLL is
    # maximising gamma * mean log-likelihood.
    beta = adaptive_kl_coef(beta, observed_kl=kl_stats["kl"], target_kl=6.0, horizon=10000,
                            num_steps=batch_size)   # optional (Ziegler et al. 2019)

Token-level losses take ``num_tokens`` (the response tokens of the whole optimizer step) so
that gradient accumulation is exact (see ``common.masked_mean``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefer.objectives.common import (
    LossAndStats,
    check_mask,
    check_positive,
    check_same_shape,
    masked_mean,
    masked_sum,
    masked_var,
    zero_outside,
)

__all__ = [
    "adaptive_kl_coef",
    "clipped_surrogate",
    "entropy",
    "gae",
    "kl_penalized_rewards",
    "last_token_index",
    "ppo_policy_loss",
    "ppo_value_loss",
    "whiten",
]


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True position of each row.

    Args:
        mask: [B, T] bool (e.g. response tokens, or an attention mask for a reward-model head
            read at the last real token).

    Returns:
        [B] int64. Raises ``ValueError`` if a row has no True entry (there is no last token
        to score: silently picking position 0 or -1 is the classic reward off-by-one).
    """
    check_mask(mask)
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got {list(mask.shape)}")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values
    if bool((last < 0).any()):
        empty = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"mask rows {empty} have no True entry: no last token to read")
    return last


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, *, kl_coef: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO rewards: KL penalty on every response token, RM score on the last one.

    Ouyang et al. 2022, Eq. (2): R(x, y) = r(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x)),
    spread over tokens as in Ziegler et al. 2019 / Stiennon et al. 2020::

        rewards[b, t] = -kl_coef * (logprobs[b, t] - ref_logprobs[b, t])   for mask[b, t]
        rewards[b, last_b] += scores[b]        last_b = last_token_index(mask)[b]
        rewards[b, t] = 0                                                  elsewhere

    The per-token KL is the single-sample estimate ``log pi - log pi_ref`` (k1). Everything
    returned is detached: rewards are targets, not a differentiable quantity.

    Args:
        scores: [B] reward-model score of each response.
        logprobs: [B, T] log-probs of the response tokens under the policy at rollout time.
        ref_logprobs: [B, T] the same under the frozen reference (SFT) policy.
        mask: [B, T] bool, response tokens.
        kl_coef: beta >= 0.

    Returns:
        ``(rewards [B, T], stats)``; stats: ``kl`` (mean over sequences of the summed
        per-token KL), ``score_mean``, ``non_score_reward`` (mean over sequences of the summed
        KL penalty), ``reward_mean`` (mean over sequences of the summed total reward).
    """
    check_mask(mask)
    check_same_shape({"logprobs": logprobs, "ref_logprobs": ref_logprobs, "mask": mask})
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores must be [B] = {list(mask.shape[:1])}, got {list(scores.shape)}")
    kl = zero_outside((logprobs - ref_logprobs).detach(), mask)
    non_score = -kl_coef * kl
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards = non_score.clone()
    rewards[rows, last] += scores.detach().to(rewards.dtype)
    stats = {
        "kl": masked_sum(kl, mask, dim=1).mean(),
        "score_mean": scores.detach().float().mean(),
        "non_score_reward": masked_sum(non_score, mask, dim=1).mean(),
        "reward_mean": masked_sum(rewards, mask, dim=1).mean(),
    }
    return rewards, stats


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens.

    Schulman et al. 2016 (GAE), as truncated in Schulman et al. 2017, Eqs. (11)-(12)::

        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last response token = 0)
        A_t     = delta_t + gamma * lam * A_{t+1}    (A after the last response token = 0)
        returns = A + V

    A position is terminal when the next position is masked out (or past the end), so each
    row's True block must be contiguous. Outputs are detached and zero outside ``mask``.

    Args:
        rewards: [B, T] per-token rewards (``kl_penalized_rewards``).
        values: [B, T] value estimates V(s_t) at rollout time.
        mask: [B, T] bool, response tokens.
        gamma: discount (InstructGPT: 1).
        lam: GAE lambda.

    Returns:
        ``(advantages [B, T], returns [B, T])``.
    """
    check_mask(mask)
    check_same_shape({"rewards": rewards, "values": values, "mask": mask})
    r = zero_outside(rewards.detach(), mask)
    v = zero_outside(values.detach().to(r.dtype), mask)
    batch, length = mask.shape
    advantages = torch.zeros_like(r)
    next_advantage = torch.zeros(batch, dtype=r.dtype, device=r.device)
    next_value = torch.zeros(batch, dtype=r.dtype, device=r.device)
    for t in reversed(range(length)):
        # next_value / next_advantage are already 0 where position t + 1 is masked out.
        delta = r[:, t] + gamma * next_value - v[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantage = torch.where(mask[:, t], advantage, torch.zeros_like(advantage))
        advantages[:, t] = advantage
        next_advantage, next_value = advantage, v[:, t]
    returns = zero_outside(advantages + v, mask)
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to mean 0 and (population) std 1 over the ``True`` entries of ``mask``.

    Args:
        x: [B, T] (e.g. advantages). Whiten over the whole rollout batch, before splitting it
            into PPO minibatches.
        mask: [B, T] bool.
        shift_mean: if False, only rescale (the mean is added back), as for rewards.
        eps: added to the variance.

    Returns:
        [B, T], zero outside ``mask``.
    """
    check_mask(mask)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return zero_outside(out, mask)


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, *, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, negated for minimisation (Schulman et al. 2017, Eq. 7)::

        l_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - clip_range, 1 + clip_range))

    Returns ``(l, active)``: the terms, and where the clipped term is the larger (active: it stops the gradient).
    ``advantages`` broadcasts against ``ratio`` (GRPO: one advantage [B, 1] per response)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    num_tokens: float | None = None,
) -> LossAndStats:
    """Clipped surrogate policy loss, per token.

    Schulman et al. 2017, Eq. (7), negated for minimisation::

        ratio_t = exp(logprobs_t - old_logprobs_t)
        loss_t  = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - clip_range, 1 + clip_range))

    averaged over response tokens with ``common.masked_mean``.

    Args:
        logprobs: [B, T] current policy log-probs, with gradient.
        old_logprobs: [B, T] log-probs at rollout time (detached here).
        advantages: [B, T] (whitened) advantages (detached here).
        mask: [B, T] bool.
        clip_range: epsilon, e.g. 0.2.
        num_tokens: response tokens in the whole optimizer step.

    Returns:
        ``(loss, stats)``; stats (detached, over this call's tokens): ``loss``,
        ``clip_fraction`` (tokens where the clipped term is the larger, i.e. active),
        ``approx_kl`` = mean of ``0.5 * (log ratio)^2`` (the "k2" estimator of
        KL(old || new)), ``ratio_mean``.
    """
    check_mask(mask)
    check_same_shape({"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages, "mask": mask})
    log_ratio = zero_outside(logprobs - old_logprobs.detach(), mask)
    ratio = torch.exp(log_ratio)
    adv = zero_outside(advantages.detach().to(ratio.dtype), mask)
    terms, clip_active = clipped_surrogate(ratio, adv, clip_range=clip_range)
    loss = masked_mean(terms, mask, num_tokens=num_tokens)
    stats = {
        "loss": loss.detach(),
        "clip_fraction": masked_mean(clip_active.to(ratio.dtype), mask).detach(),
        "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    num_tokens: float | None = None,
) -> LossAndStats:
    """Clipped value loss (PPO2 of OpenAI baselines, as in lm-human-preferences)::

        V_clip = old_V + clip(V - old_V, -clip_range, clip_range)
        loss_t = 0.5 * max((V - R)^2, (V_clip - R)^2)

    Args:
        values: [B, T] current value predictions, with gradient.
        old_values: [B, T] values at rollout time (detached here).
        returns: [B, T] GAE returns (detached here).
        mask: [B, T] bool.
        clip_range: value clip, e.g. 0.2.
        num_tokens: response tokens in the whole optimizer step.

    Returns:
        ``(loss, stats)``; stats (detached, over this call's tokens): ``loss``,
        ``clip_fraction`` (tokens where the clipped error is the larger),
        ``explained_variance`` = 1 - Var[R - V] / Var[R] (NaN if Var[R] = 0).
    """
    check_mask(mask)
    check_same_shape({"values": values, "old_values": old_values, "returns": returns, "mask": mask})
    v = zero_outside(values, mask)
    old = zero_outside(old_values.detach().to(v.dtype), mask)
    ret = zero_outside(returns.detach().to(v.dtype), mask)
    v_clipped = old + (v - old).clamp(-clip_range, clip_range)
    error = (v - ret) ** 2
    error_clipped = (v_clipped - ret) ** 2
    loss = masked_mean(0.5 * torch.maximum(error, error_clipped), mask, num_tokens=num_tokens)
    stats = {
        "loss": loss.detach(),
        # Where |V - old_V| is within the clip range V_clip equals V up to rounding: count only real clipping.
        "clip_fraction": masked_mean(
            ((error_clipped > error) & ((v - old).abs() > clip_range)).to(v.dtype), mask
        ).detach(),
        "explained_variance": explained_variance(v.detach(), ret, mask),
    }
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over the masked tokens of values, returns [B, T] (NaN when Var[R] = 0): how much
    of the returns' variance the value function predicts (1 perfect, 0 no better than their mean)."""
    check_mask(mask)
    check_same_shape({"values": values, "returns": returns, "mask": mask})
    v, ret = zero_outside(values.detach(), mask), zero_outside(returns.detach().to(values.dtype), mask)
    var_returns = masked_var(ret, mask)
    explained = 1.0 - masked_var(ret - v, mask) / var_returns
    return torch.where(var_returns > 0, explained, torch.full_like(explained, float("nan")))


def proxy_rewards(
    misalignment: Sequence[float], *, stopped: torch.Tensor, missing_eos_penalty: float | None
) -> torch.Tensor:
    """The reward PPO maximises for each episode [B]: minus the proxy's misalignment (scorers report misalignment,
    lower is better), less `missing_eos_penalty` for a response that never stopped (stopped: bool [B])."""
    rewards = -torch.tensor(misalignment, dtype=torch.float32)
    if missing_eos_penalty is not None:
        rewards = rewards - missing_eos_penalty * (~stopped).float()
    return rewards


def adaptive_kl_coef(kl_coef: float, *, observed_kl: float, target_kl: float, horizon: float, num_steps: int) -> float:
    """Next KL coefficient of the adaptive controller (Ziegler et al. 2019, Sec. 2.2)::

        error = clip(observed_kl / target_kl - 1, -0.2, 0.2)
        kl_coef <- kl_coef * (1 + error * num_steps / horizon)

    Args:
        kl_coef: current beta.
        observed_kl: KL of the last batch (``kl_penalized_rewards``' ``kl`` stat; a tensor
            is accepted).
        target_kl: KL target > 0.
        horizon: horizon > 0 (in the same unit as ``num_steps``, usually episodes).
        num_steps: episodes (or steps) since the last update.
    """
    check_positive("target_kl", target_kl)
    check_positive("horizon", horizon)
    error = min(max(float(observed_kl) / target_kl - 1.0, -0.2), 0.2)
    return float(kl_coef) * (1.0 + error * num_steps / horizon)


def entropy(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the sampling distribution at each position, in nats::

        H_t = -sum_v p_v log p_v,   p = softmax(logits_t / temperature)

    Logged during PPO to watch the policy collapse; use the sampling temperature so that it
    is the entropy of the distribution the rollouts were actually drawn from.

    Args:
        logits: [B, T, V] (half precision is upcast to float32).
        temperature: > 0.

    Returns:
        [B, T]; average it over response tokens with ``common.masked_mean``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    # p * log p with p = 0 (logit -inf) is 0, not NaN: xlogy-style guard via where.
    plogp = torch.where(logp.isfinite(), logp.exp() * logp, torch.zeros((), dtype=logp.dtype))
    return -plogp.sum(dim=-1)
