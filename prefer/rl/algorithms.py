"""The policy-gradient algorithms, by name: what each does between a rollout and an optimizer step.

    ALGORITHMS[name] = Algorithm(critic, rewards_read_logprobs, advantages, backward, denominator)

PPO (Schulman et al. 2017; Ouyang et al. 2022) learns a critic and whitens GAE advantages of per-token KL-penalised
rewards; RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024) take the baseline of a response from the other
responses to its prompt. The loss math is `prefer.objectives`; `prefer.stages.policy_gradient` is the one loop
that runs any row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from prefer.data.packing import TokenBlocks
from prefer.objectives import (
    entropy,
    explained_variance,
    grpo_advantages,
    grpo_loss,
    masked_sum,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    rloo_loss,
    token_logprobs,
)
from prefer.rl.episodes import ptx_backward
from prefer.rl.rollout import Rollout, add_advantages, policy_logits
from prefer.training import (
    BlockOrder,
    Distributed,
    accumulate_stats,
    all_gather_rows,
    autocast,
    average_across_ranks,
    gradient_sync,
    optimizer_step,
    per_rank_denominator,
)

__all__ = [
    "ALGORITHMS",
    "GROUP_RULES",
    "Algorithm",
    "GroupRule",
    "PTXBatches",
    "group_advantages",
    "group_backward",
    "ppo_advantages",
    "ppo_backward",
    "update_on_batch",
]


# ------------------------------------------------------------------ PPO: a critic, GAE, the clipped surrogate


def ppo_advantages(rollout: Rollout, *, kl_coef: float, loss) -> tuple[Rollout, dict]:
    """Per-token KL-penalised rewards, GAE over the rollout-time values, whitened over the global batch. Stats: the
    tensors `kl` and `reward_total`, and `log` (extra scalars for the metrics)."""
    rollout, kl_stats = add_advantages(rollout, kl_coef=kl_coef, gamma=loss.gamma, lam=loss.lam)
    # Explained variance of the rollout-time values over the whole batch (not additive over micro-batches).
    explained = explained_variance(rollout.values, rollout.returns, rollout.response_mask).item()
    return rollout, {
        "kl": kl_stats["kl"],
        "reward_total": kl_stats["reward_mean"],
        "log": {"value/explained_variance": explained},
    }


def ppo_backward(
    policy,
    value_model,
    minibatch: Rollout,
    *,
    micro_batch_size: int,
    temperature: float,
    clip_range: float,
    value_clip_range: float,
    vf_coef: float,
    device,
    precision: str,
    num_tokens: float | None = None,
    sync_policy: bool = True,
) -> dict[str, float]:
    """Accumulate the gradient of (clipped policy loss + vf_coef x clipped value loss) over one minibatch.

    Both losses are normalised by `num_tokens`: the response tokens of the optimizer step's whole minibatch (None =
    this minibatch's own). Under torchrun each rank passes its part of the minibatch and that count divided by the
    number of ranks, since DDP and FSDP2 average the ranks' gradients. So 1 micro-batch of 8, 8 of 1, and 2 ranks
    with 4 each all give the same gradient. Gradients are reduced over the ranks in the last micro-batch (the
    policy's only with `sync_policy`; False when PPO-ptx passes follow in the same step). Log-probs use the
    sampling temperature, like the old ones. Returns the stats (loss terms summed, other stats token-weighted
    means; under torchrun this rank's share of them: average them over the ranks)."""
    num_tokens = minibatch.response_mask.sum().item() if num_tokens is None else num_tokens
    totals: dict[str, float] = {}
    starts = range(0, len(minibatch), micro_batch_size)
    for start in starts:
        part = minibatch.select(slice(start, start + micro_batch_size))
        last = start == starts[-1]
        with gradient_sync([policy], sync=last and sync_policy), gradient_sync([value_model], sync=last):
            with autocast(device, precision):
                logits = policy_logits(policy, part)
                values = value_model(part)
            logprobs = token_logprobs(logits.float(), part.response, temperature=temperature)
            pg_loss, pg_stats = ppo_policy_loss(
                logprobs,
                part.logprobs,
                part.advantages,
                part.response_mask,
                clip_range=clip_range,
                num_tokens=num_tokens,
            )
            vf_loss, vf_stats = ppo_value_loss(
                values.float(),
                part.values,
                part.returns,
                part.response_mask,
                clip_range=value_clip_range,
                num_tokens=num_tokens,
            )
            (pg_loss + vf_coef * vf_loss).backward()
        stats = {f"policy/{k}": v for k, v in pg_stats.items()}
        stats |= {f"value/{k}": v for k, v in vf_stats.items() if k != "explained_variance"}  # not additive
        accumulate_stats(totals, stats, fraction=part.response_mask.sum().item() / num_tokens)
    return totals


# ------------------------------------------------------------------ RLOO and GRPO: K samples per prompt, no critic


class GroupRule(NamedTuple):
    """A critic-free algorithm: advantages(scores [G, K], kl [G, K], *, kl_coef, group) -> [G, K], and
    loss(part, logprobs, *, kl_coef, group, num_sequences, on_policy) -> (loss, stats)."""

    advantages: Callable
    loss: Callable


def _rloo_loss(part: Rollout, logprobs, *, kl_coef, group, num_sequences, on_policy):
    # REINFORCE on the whole response; later minibatches of a batch are off-policy: the clipped sequence ratio
    return rloo_loss(
        logprobs,
        part.advantages[:, 0],
        part.response_mask,
        num_sequences=num_sequences,
        old_logprobs=None if on_policy else part.logprobs,
        clip_range=group.clip_range,
    )


def _grpo_loss(part: Rollout, logprobs, *, kl_coef, group, num_sequences, on_policy):
    # the clipped token ratio + beta x the k3 KL to the reference (on and off policy alike)
    return grpo_loss(
        logprobs,
        part.logprobs,
        part.ref_logprobs,
        part.advantages[:, 0],
        part.response_mask,
        clip_range=group.clip_range,
        kl_coef=kl_coef,
        num_sequences=num_sequences,
    )


GROUP_RULES: dict[str, GroupRule] = {
    # RLOO: the KL penalty folded into the reward, as PPO does; leave-one-out baseline
    "rloo": GroupRule(
        advantages=lambda scores, kl, *, kl_coef, group: rloo_advantages(scores - kl_coef * kl), loss=_rloo_loss
    ),
    # GRPO: advantages from the scores alone (group.scale=false: Dr. GRPO's centred ones); the KL is a loss term
    "grpo": GroupRule(
        advantages=lambda scores, kl, *, kl_coef, group: grpo_advantages(scores, scale=group.scale), loss=_grpo_loss
    ),
}


def group_advantages(
    rollout: Rollout, *, algorithm: str, group_size: int, kl_coef: float, group
) -> tuple[Rollout, dict[str, torch.Tensor]]:
    """Advantages of a batch whose episodes come prompt-major in groups of `group_size`, written onto every
    response token (one advantage per response). Stats: the KL (k1, summed per response) and the rewards."""
    mask = rollout.response_mask
    kl = masked_sum(rollout.logprobs - rollout.ref_logprobs, mask, dim=1)  # [B]
    scores = rollout.episode_rewards
    advantages = (
        GROUP_RULES[algorithm]
        .advantages(scores.view(-1, group_size), kl.view(-1, group_size), kl_coef=kl_coef, group=group)
        .flatten()
    )
    per_token = torch.where(mask, advantages[:, None].expand_as(mask), torch.zeros((), device=mask.device))
    stats = {
        "kl": kl.mean(),
        "reward_total": (scores - kl_coef * kl).mean(),
        "group_std": scores.view(-1, group_size).std(dim=1).mean(),
    }
    return replace(rollout, advantages=per_token), stats


def group_backward(
    policy,
    minibatch: Rollout,
    *,
    algorithm: str,
    group,
    kl_coef: float,
    micro_batch_size: int,
    temperature: float,
    device,
    precision: str,
    num_sequences: float | None = None,
    sync_policy: bool = True,
    on_policy: bool = True,
    fill_old_logprobs: bool = False,
) -> dict[str, float]:
    """Accumulate the gradient of the algorithm's loss over one minibatch, normalised by `num_sequences` (the
    responses of the optimizer step's whole minibatch, None = this one's; under torchrun that count divided by the
    number of ranks), so that micro-batches and ranks do not change the step. `on_policy`: the policy has not
    changed since sampling (the batch's first optimizer step). `fill_old_logprobs`: the rollout skipped the old
    log-probs (NaN); this forward is the sampling policy's, so its detached log-probs and entropy are written into
    the minibatch's `logprobs` and `entropy` (in place) and used as the old ones: the ratio is exactly 1, as TRL's
    GRPO does when a batch makes one step. Returns the loss shares and the response-weighted stats."""
    num_sequences = len(minibatch) if num_sequences is None else num_sequences
    totals: dict[str, float] = {}
    starts = range(0, len(minibatch), micro_batch_size)
    for start in starts:
        part = minibatch.select(slice(start, start + micro_batch_size))
        with gradient_sync([policy], sync=start == starts[-1] and sync_policy):
            with autocast(device, precision):
                logits = policy_logits(policy, part)
            logprobs = token_logprobs(logits.float(), part.response, temperature=temperature)
            if fill_old_logprobs:
                part.logprobs.copy_(logprobs.detach())
                part.entropy.copy_(entropy(logits.detach().float(), temperature=temperature))
            loss, stats = GROUP_RULES[algorithm].loss(
                part,
                logprobs,
                kl_coef=kl_coef,
                group=group,
                num_sequences=num_sequences,
                on_policy=on_policy,
            )
            loss.backward()
        accumulate_stats(totals, {f"policy/{k}": v for k, v in stats.items()}, fraction=len(part) / num_sequences)
    return totals


# ------------------------------------------------------------------ the algorithms, by name


class Algorithm(NamedTuple):
    """One row of the policy-gradient table.

    critic: a value model is trained beside the policy.
    rewards_read_logprobs: the rewards (so the advantages) take the KL penalty from the old log-probs, which the
        rollout must then compute before the update (PPO, RLOO); False (GRPO: the KL is a loss term) lets a batch
        that makes one optimizer step take them from the update's own forward instead.
    `loss` below is the algorithm's own hyperparameters (a PPOLossConfig: gamma, lam, clips, vf_coef; a
    GroupLossConfig: size, clip_range, scale).
    advantages(rollout, *, kl_coef, loss) -> (rollout with advantages, stats: tensors `kl` [], `reward_total` [],
        and `log`, a dict of extra scalars for the metrics).
    backward(policy, value_model, minibatch, *, kl_coef, loss, micro_batch_size, device, denominator,
        sync_policy, on_policy) -> stats: accumulates one optimizer step's gradient of the algorithm's loss.
    denominator(minibatch) -> what one step's loss is normalised by: response tokens (PPO) or responses."""

    critic: bool
    rewards_read_logprobs: bool
    advantages: Callable
    backward: Callable
    denominator: Callable


def _group_advantages_of(algorithm: str):
    def advantages(rollout: Rollout, *, kl_coef: float, loss) -> tuple[Rollout, dict]:
        rollout, stats = group_advantages(
            rollout, algorithm=algorithm, group_size=loss.size, kl_coef=kl_coef, group=loss
        )
        stats["log"] = {"reward/group_std": stats.pop("group_std").item()}
        return rollout, stats

    return advantages


def _group_backward_of(algorithm: str):
    def backward(policy, value_model, minibatch, *, kl_coef, loss, denominator, **common):
        return group_backward(
            policy,
            minibatch,
            algorithm=algorithm,
            group=loss,
            kl_coef=kl_coef,
            num_sequences=denominator,
            **common,
        )

    return backward


def _ppo_backward(
    policy, value_model, minibatch, *, kl_coef, loss, denominator, on_policy, fill_old_logprobs=False, **common
):
    assert not fill_old_logprobs, "PPO's rewards read the old log-probs: the rollout computes them"
    return ppo_backward(
        policy,
        value_model,
        minibatch,
        clip_range=loss.clip_range,
        value_clip_range=loss.value_clip_range,
        vf_coef=loss.vf_coef,
        num_tokens=denominator,
        **common,
    )


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm(
        critic=True,
        rewards_read_logprobs=True,
        advantages=ppo_advantages,
        backward=_ppo_backward,
        denominator=lambda minibatch: minibatch.response_mask.sum().item(),
    ),
    **{
        name: Algorithm(
            critic=False,
            rewards_read_logprobs=name == "rloo",  # RLOO folds the KL into the reward; GRPO makes it a loss term
            advantages=_group_advantages_of(name),
            backward=_group_backward_of(name),
            denominator=len,
        )
        for name in GROUP_RULES
    },
}


@dataclass(frozen=True)
class PTXBatches:
    """PPO-ptx: a batch of pretraining blocks in every optimizer step, weighted by `coef` (Ouyang et al. 2022, Eq. 2's
    gamma). `order` draws the blocks (its position is part of a checkpoint)."""

    blocks: TokenBlocks
    order: BlockOrder
    coef: float
    batch_size: int


def update_on_batch(
    algorithm: Algorithm,
    rollout: Rollout,
    *,
    policy,
    value_model,
    loss,
    kl_coef: float,
    epochs: int,
    minibatch_size: int,
    shuffle_seed: int,
    micro_batch_size: int,
    temperature: float,
    device,
    precision: str,
    dist: Distributed,
    optimizer,
    scheduler,
    grad_clip: float,
    ptx: PTXBatches | None,
    old_logprobs_from_update: bool = False,
) -> dict[str, float]:
    """`epochs` passes over minibatches of one global shuffle of the rollout's episodes (`minibatch_size`, all ranks
    together), each split over the ranks, one optimizer step each; with PPO-ptx each step also sees a batch of
    pretraining blocks, split likewise. Losses are normalised by the global minibatch (its response tokens for PPO,
    its responses for RLOO / GRPO). `old_logprobs_from_update`: the rollout's `logprobs` and `entropy` are NaN
    (`make_rollout(policy_logprobs=False)`) and the batch makes one step; its forward fills them, on every rank, in
    the rollout given (in place), so the caller can log the KL. Returns the stats, averaged over the steps and the
    ranks."""
    trained = [policy] + ([value_model] if value_model is not None else [])
    steps = epochs * len(rollout) // minibatch_size
    if old_logprobs_from_update and steps != 1:
        raise ValueError(f"old log-probs from the update need one optimizer step per batch, not {steps}")
    totals: dict[str, float] = {}
    shuffle = torch.Generator().manual_seed(shuffle_seed)
    part = minibatch_size // dist.world_size
    step = 0
    for _epoch in range(epochs):
        for rows in torch.randperm(len(rollout), generator=shuffle).split(minibatch_size):
            rows = rows.to(device)
            minibatch = rollout.select(rows)
            mine = minibatch.select(slice(dist.rank * part, (dist.rank + 1) * part))  # views: filled in place
            stats = algorithm.backward(
                policy,
                value_model,
                mine,
                kl_coef=kl_coef,
                loss=loss,
                denominator=per_rank_denominator(algorithm.denominator(minibatch), dist.world_size),
                on_policy=step == 0,  # the batch's first step: the policy that sampled it
                micro_batch_size=micro_batch_size,
                temperature=temperature,
                device=device,
                precision=precision,
                sync_policy=ptx is None,
                fill_old_logprobs=old_logprobs_from_update,
            )
            if old_logprobs_from_update:  # every rank's rows, in the minibatch's order, back to the rollout's rows
                for name in ("logprobs", "entropy"):
                    getattr(rollout, name)[rows] = all_gather_rows(getattr(mine, name), dist)
            if ptx is not None:
                blocks = ptx.blocks.ids[ptx.order.next(ptx.batch_size)]
                stats |= ptx_backward(
                    policy,
                    blocks.chunk(dist.world_size)[dist.rank],
                    ptx_coef=ptx.coef,
                    micro_batch_size=micro_batch_size,
                    device=device,
                    precision=precision,
                    num_tokens=per_rank_denominator(blocks.shape[0] * (blocks.shape[1] - 1), dist.world_size),
                )
            stats["grad_norm"] = optimizer_step(trained, optimizer, scheduler, grad_clip=grad_clip)
            for key, value in stats.items():  # mean over the iteration's optimizer steps
                totals[key] = totals.get(key, 0.0) + value / steps
            step += 1
    return average_across_ranks(totals, dist)  # each rank's loss shares and token-weighted stat shares
