"""Policy-gradient RL against a scorer or reward model, with the KL to the SFT model and PPO-ptx: PPO, RLOO, GRPO.

    prompts -> K KV-cached samples of the policy per prompt (PPO: K = 1) -> proxy reward (+ gold, logged only)
    -> the algorithm's advantages:  PPO: per-token KL penalty, GAE over a value model, whitened
                                    RLOO: reward - beta KL, leave-one-out baseline | GRPO: group-normalised scores
    -> epochs over minibatches of one global shuffle: the algorithm's loss (+ ptx_coef x LM loss on pretraining
       blocks) -> checkpoints -> <out_dir>/final

Objective (Ouyang et al. 2022, Eq. 2), maximised:
    E_(x,y)~pi_RL [ r(x, y) - beta log(pi_RL(y|x) / pi_SFT(y|x)) ] + gamma E_x~D_pretrain [ log pi_RL(x) ]
PPO optimises it with the clipped surrogate of Schulman et al. 2017 (Eq. 7) and a critic; RLOO (Ahmadian et al.
2024) and GRPO (Shao et al. 2024) take the baseline of a response from the other responses to its prompt and load
no value model. An algorithm is one row of `ALGORITHMS`; everything else is this one loop. `prefer ppo` runs a
`PPOConfig`, `prefer grpo` a `GroupRLConfig` (group.algorithm = rloo | grpo); run either under
`torchrun --nproc_per_node N` for DDP (or FSDP2 with runtime.parallel=fsdp).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from prefer.config import GroupRLConfig, PPOConfig
from prefer.data.formats import read_prompts
from prefer.data.packing import TokenBlocks
from prefer.errors import PreferError
from prefer.evaluation.capability import heldout_block_loss
from prefer.models.build import (
    check_model_dir,
    check_same_vocabulary,
    context_length,
    control_token_ids,
    load_model,
    load_tokenizer,
)
from prefer.models.heads import ValueHead
from prefer.models.lora import FrozenView, model_source, prepare
from prefer.objectives import (
    adaptive_kl_coef,
    explained_variance,
    grpo_advantages,
    grpo_loss,
    masked_mean,
    masked_sum,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    rloo_loss,
    token_logprobs,
)
from prefer.rollouts import (
    Rollout,
    SharedTrunkValueModel,
    ValueModel,
    add_advantages,
    gather_rollout,
    log_samples,
    make_rollout,
    policy_logits,
    pretraining_blocks,
    ptx_backward,
    read_queries,
    sample_responses,
    samples_log,
    sampling_chunk,
    score_episodes,
)
from prefer.run_dir import RESUME_MAY_CHANGE, releases_run_dirs
from prefer.scorers import get_scorer
from prefer.training import (
    BlockOrder,
    accumulate_stats,
    all_gather_objects,
    all_gather_rows,
    autocast,
    average_across_ranks,
    check_checkpoint_vocabulary,
    gradient_sync,
    load_trainer_state,
    make_optimizer,
    make_scheduler,
    micro_batch_size,
    optimizer_step,
    per_rank_denominator,
    restore_optimizer,
    unsharded,
    unwrap,
    wrap_model,
)
from prefer.training.run import StageRun

__all__ = [
    "ALGORITHMS",
    "GROUP_RULES",
    "Algorithm",
    "build_value_model",
    "group_advantages",
    "group_backward",
    "group_rl",
    "policy_gradient",
    "ppo",
    "ppo_advantages",
    "ppo_backward",
    "ptx_backward",
]


# ------------------------------------------------------------------ PPO: a critic, GAE, the clipped surrogate


def ppo_advantages(rollout: Rollout, *, kl_coef: float, config) -> tuple[Rollout, dict]:
    """Per-token KL-penalised rewards, GAE over the rollout-time values, whitened over the global batch. Stats: the
    tensors `kl` and `reward_total`, and `log` (extra scalars for the metrics)."""
    rollout, kl_stats = add_advantages(rollout, kl_coef=kl_coef, gamma=config.ppo.gamma, lam=config.ppo.lam)
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


def build_value_model(init_from: str, reward_model: str | None) -> ValueModel:
    """The critic: the reward model's trunk and score head (InstructGPT), else the SFT trunk and a zero head."""
    if reward_model is None:
        trunk = load_model(init_from).base_model
        return ValueModel(trunk, ValueHead(trunk.config.hidden_size))
    from transformers import AutoModelForSequenceClassification

    try:
        rm = AutoModelForSequenceClassification.from_pretrained(reward_model, num_labels=1)
    except Exception as error:  # transformers raises many types; the user needs the path and the cause
        raise PreferError(f"reward.model: cannot load a reward model from {reward_model}: {error}") from error
    head = ValueHead(rm.config.hidden_size)
    score = rm.score if hasattr(rm, "score") else rm.get_output_embeddings()
    with torch.no_grad():
        head.linear.weight.copy_(score.weight)
        if getattr(score, "bias", None) is not None:
            head.linear.bias.copy_(score.bias)
        info_path = Path(reward_model) / "prefer.json"  # reward models from before the bias was folded in
        if info_path.exists():
            head.linear.bias += float(json.loads(info_path.read_text()).get("reward_bias", 0.0))
    return ValueModel(rm.base_model, head)


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
) -> dict[str, float]:
    """Accumulate the gradient of the algorithm's loss over one minibatch, normalised by `num_sequences` (the
    responses of the optimizer step's whole minibatch, None = this one's; under torchrun that count divided by the
    number of ranks), so that micro-batches and ranks do not change the step. `on_policy`: the policy has not
    changed since sampling (the batch's first optimizer step). Returns the loss shares and the response-weighted
    stats."""
    num_sequences = len(minibatch) if num_sequences is None else num_sequences
    totals: dict[str, float] = {}
    starts = range(0, len(minibatch), micro_batch_size)
    for start in starts:
        part = minibatch.select(slice(start, start + micro_batch_size))
        with gradient_sync([policy], sync=start == starts[-1] and sync_policy):
            with autocast(device, precision):
                logits = policy_logits(policy, part)
            logprobs = token_logprobs(logits.float(), part.response, temperature=temperature)
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
    advantages(rollout, *, kl_coef, config) -> (rollout with advantages, stats: tensors `kl` [], `reward_total` [],
        and `log`, a dict of extra scalars for the metrics).
    backward(policy, value_model, minibatch, *, kl_coef, config, micro_batch_size, device, num_tokens_or_sequences,
        sync_policy, on_policy) -> stats: accumulates one optimizer step's gradient of the algorithm's loss.
    denominator(minibatch) -> what one step's loss is normalised by: response tokens (PPO) or responses."""

    critic: bool
    advantages: Callable
    backward: Callable
    denominator: Callable


def _group_advantages_of(algorithm: str):
    def advantages(rollout: Rollout, *, kl_coef: float, config) -> tuple[Rollout, dict]:
        rollout, stats = group_advantages(
            rollout, algorithm=algorithm, group_size=config.group.size, kl_coef=kl_coef, group=config.group
        )
        stats["log"] = {"reward/group_std": stats.pop("group_std").item()}
        return rollout, stats

    return advantages


def _group_backward_of(algorithm: str):
    def backward(policy, value_model, minibatch, *, kl_coef, config, denominator, **common):
        return group_backward(
            policy,
            minibatch,
            algorithm=algorithm,
            group=config.group,
            kl_coef=kl_coef,
            num_sequences=denominator,
            **common,
        )

    return backward


def _ppo_backward(policy, value_model, minibatch, *, kl_coef, config, denominator, on_policy, **common):
    return ppo_backward(
        policy,
        value_model,
        minibatch,
        clip_range=config.ppo.clip_range,
        value_clip_range=config.ppo.value_clip_range,
        vf_coef=config.ppo.vf_coef,
        num_tokens=denominator,
        **common,
    )


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm(
        critic=True,
        advantages=ppo_advantages,
        backward=_ppo_backward,
        denominator=lambda minibatch: minibatch.response_mask.sum().item(),
    ),
    **{
        name: Algorithm(
            critic=False,
            advantages=_group_advantages_of(name),
            backward=_group_backward_of(name),
            denominator=len,
        )
        for name in GROUP_RULES
    },
}


@dataclass(frozen=True)
class _Plan:
    """What the two configs say in their own words: the algorithm, K, passes over a batch, the reference."""

    algorithm: str
    group_size: int
    epochs: int
    reference: str | None

    @classmethod
    def of(cls, config: PPOConfig | GroupRLConfig) -> _Plan:
        if isinstance(config, PPOConfig):
            return cls("ppo", 1, config.train.ppo_epochs, None)
        return cls(config.group.algorithm, config.group.size, config.train.epochs, config.reference)


# ------------------------------------------------------------------ the stage


@releases_run_dirs
def policy_gradient(config: PPOConfig | GroupRLConfig, *, resume: bool = False) -> Path:
    """Run PPO (a PPOConfig) or RLOO / GRPO (a GroupRLConfig), with PPO-ptx when ptx.coef > 0; returns the final
    policy's directory (`<out_dir>/final`).

    Under torchrun every rank samples, scores and evaluates all K responses of its contiguous share of each
    iteration's prompts; the episodes are then gathered, so that every rank holds the global batch (whole groups):
    advantages are whitened or grouped over it, the logged statistics and the adaptive KL coefficient are those of
    the global batch, and each minibatch of one global shuffle is split over the ranks (see docs/distributed.md)."""
    plan = _Plan.of(config)
    algorithm = ALGORITHMS[plan.algorithm]
    K = plan.group_size
    # the schedule is constant, so a run may also be extended: train.iterations may change on resume
    run = StageRun(
        config, type(config), resume=resume, name=plan.algorithm, may_change=RESUME_MAY_CHANGE | {"iterations"}
    )
    dist, device, checkpoint, say = run.dist, run.device, run.checkpoint, run.say

    # Prompts, model directories and scorer names are checked before any model is loaded.
    read_prompts(config.prompts)
    reference_path = plan.reference or config.init_from
    check_model_dir(config.init_from, field="init_from")
    if plan.reference is not None:
        check_model_dir(plan.reference, field="reference")
    if config.reward.model is not None:
        check_model_dir(config.reward.model, field="reward.model")
    scorer_name = config.reward.scorer or f"rm:{config.reward.model}"
    scorer = get_scorer(scorer_name)
    gold_scorer = get_scorer(config.reward.gold_scorer) if config.reward.gold_scorer else None

    # 1. Models: the policy starts as the SFT model, which (or `reference`) stays as the frozen reference.
    tokenizer = load_tokenizer(config.init_from, field="init_from")
    if checkpoint is not None:
        check_checkpoint_vocabulary(checkpoint, load_tokenizer(checkpoint / "model", field="checkpoint"), tokenizer)
    if plan.reference is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(reference_path), what=f"reference {reference_path}")
    if config.reward.model is not None:
        check_same_vocabulary(
            tokenizer, load_tokenizer(config.reward.model), what=f"reward.model {config.reward.model}"
        )
    if scorer_name.startswith("rm:") and scorer_name != f"rm:{config.reward.model}":
        check_same_vocabulary(tokenizer, load_tokenizer(scorer_name.removeprefix("rm:")), what=f"reward {scorer_name}")
    policy = prepare(
        load_model(model_source(config.init_from, checkpoint, config.lora), tokenizer=tokenizer),
        config.lora,
        checkpoint=checkpoint,
    )
    # LoRA against the SFT model: the reference is the policy's own trunk with the adapters off (one model, not two)
    shared = config.lora.enabled and plan.reference is None
    reference = FrozenView(policy) if shared else load_model(reference_path, tokenizer=tokenizer)
    reference.requires_grad_(False)
    value_model = None
    if algorithm.critic and config.value_trunk == "shared":
        if dist.world_size > 1:
            raise PreferError("config: value_trunk: shared runs in one process; under torchrun use separate")
        value_model = SharedTrunkValueModel(policy)
    elif algorithm.critic:
        value_model = build_value_model(config.init_from, config.reward.model)
        prepare(value_model.trunk, config.lora)  # its own adapters; the head stays trainable
    if checkpoint is not None and value_model is not None:
        from safetensors.torch import load_file

        value_model.load_state_dict(load_file(checkpoint / "model" / "value_model.safetensors"))
    # Dropout off everywhere, always (eval mode): rollouts, log-prob recomputation and the update then see the same
    # function, so the first ratio is 1 and the KL measures the policy, not dropout noise. Gradients still flow.
    models = [policy, reference] + ([value_model] if value_model is not None else [])
    for model in models:
        model.to(device).eval()
    context = context_length(policy)
    policy = wrap_model(policy, dist, device, parallel=config.runtime.parallel)
    if value_model is not None:
        value_model = wrap_model(value_model, dist, device, parallel=config.runtime.parallel)
    if config.runtime.parallel == "fsdp":  # no gradients, so nothing for DDP to do; FSDP2 shards its weights too
        reference = wrap_model(reference, dist, device, parallel="fsdp")
    trained = [policy] + ([value_model] if value_model is not None else [])
    eos = tokenizer.eos_token_id
    control_ids = control_token_ids(tokenizer)  # left out of the held-out LM loss, as in pretraining

    # 2. Data: prompts (each must leave room for the response), pretraining blocks for PPO-ptx.
    prompts, queries = read_queries(config.prompts, tokenizer, max_length=context - config.rollout.max_new_tokens)
    ptx_blocks = val_blocks = None
    if config.ptx.source is not None:
        ptx_blocks, val_blocks = pretraining_blocks(
            config.ptx.source, tokenizer, block_size=context, max_bytes=config.ptx.max_bytes
        )
        val_blocks = val_blocks.ids[: config.ptx.eval_blocks]

    # 3. Batch geometry (prompts per iteration, minibatches: global, all ranks together), optimizer, state.
    micro = micro_batch_size(
        config.train.minibatch_size, config.train.micro_batch_size, dist.world_size, field="train.minibatch_size"
    )
    for key, value in (("train.batch_size", config.train.batch_size), ("ptx.batch_size", config.ptx.batch_size)):
        if value % dist.world_size and (key != "ptx.batch_size" or config.ptx.coef > 0):
            raise PreferError(f"config: {key} {value} must be a multiple of the number of ranks ({dist.world_size})")
    episodes = config.train.batch_size * K
    share = config.train.batch_size // dist.world_size  # prompts each rank samples per iteration
    if (share * K) % micro:
        raise PreferError(
            f"config: train.micro_batch_size {micro} must divide each rank's episodes per iteration ({share * K})"
        )
    chunk = sampling_chunk(config.rollout.sample_batch_size, micro_batch_size=micro, episodes_per_rank=share * K)
    steps_per_iteration = plan.epochs * episodes // config.train.minibatch_size
    optimizer = make_optimizer(
        trained,
        lr=config.optimizer.lr,
        weight_decay=config.optimizer.weight_decay,
        betas=(config.optimizer.beta1, config.optimizer.beta2),
    )
    scheduler = make_scheduler(
        optimizer, total_steps=config.train.iterations * steps_per_iteration, warmup_steps=1, min_lr_fraction=1.0
    )  # constant: the step size is set by the clip
    order = BlockOrder(len(queries), seed=config.runtime.seed)
    ptx_order = BlockOrder(len(ptx_blocks), seed=config.runtime.seed + 1) if ptx_blocks is not None else None
    kl_coef = config.kl.coef
    start = 0
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        restore_optimizer(checkpoint, state, optimizer, scheduler, modules=trained)
        order = BlockOrder(len(queries), seed=config.runtime.seed, **state["order"])
        if ptx_order is not None:
            ptx_order = BlockOrder(len(ptx_blocks), seed=config.runtime.seed + 1, **state["ptx_order"])
        kl_coef, start = state["kl_coef"], state["step"]
    sft_info_path = Path(config.init_from) / "prefer.json"
    info = {
        **(json.loads(sft_info_path.read_text()) if sft_info_path.exists() else {}),
        "stage": plan.algorithm,
        "init_from": config.init_from,
        "scorer": scorer_name,
        "gold_scorer": config.reward.gold_scorer,
        "ptx_coef": config.ptx.coef,
    }
    if not algorithm.critic:
        info |= {"reference": reference_path, "group_size": K}
    run.begin(start=start, total=config.train.iterations, unit="iter")
    samples_path = samples_log(run.run_dir, resume_step=run.resume_step) if dist.is_main else None
    say(
        f"[{plan.algorithm}] {len(queries)} prompts, {config.train.iterations} iterations of "
        f"{config.train.batch_size} prompts x {K} samples, {steps_per_iteration} optimizer steps each, "
        f"beta {kl_coef:g}"
        + (f" (adaptive, target KL {config.kl.target:g})" if config.kl.target else "")
        + ("" if algorithm.critic else ", no value model")
        + f", device {device}"
        + (f", {dist.world_size} ranks ({config.runtime.parallel})" if dist.world_size > 1 else "")
    )

    # 4. The loop.
    for iteration in range(start, config.train.iterations):
        # a. K samples of each of this rank's prompts (prompt-major: a prompt's group is contiguous), KV-cached at the
        #    training temperature, truncated at eos, seeded by (iteration, chunk of the global batch), so that a
        #    resumed run or another number of ranks draws the same episodes.
        index = order.next(config.train.batch_size).tolist()[dist.rank * share : (dist.rank + 1) * share]
        index = [i for i in index for _ in range(K)]
        with unsharded(policy):  # FSDP2: ranks stop sampling at different steps, so no collective per step
            sampled = sample_responses(
                unwrap(policy),
                [queries[i] for i in index],
                first=dist.rank * len(index),
                chunk=chunk,
                seed=config.runtime.seed,
                iteration=iteration,
                max_new_tokens=config.rollout.max_new_tokens,
                eos_token_id=eos,
                temperature=config.rollout.temperature,
            )
        # The sampler drops the eos; score_episodes puts it back: stopping is an action of the policy.
        scored = score_episodes(
            sampled,
            [prompts[i] for i in index],
            tokenizer,
            scorer=scorer,
            gold_scorer=gold_scorer,
            max_new_tokens=config.rollout.max_new_tokens,
            missing_eos_penalty=config.reward.missing_eos_penalty,
        )
        rollout = make_rollout(
            unwrap(policy),
            reference,
            None if value_model is None else unwrap(value_model),
            [queries[i] for i in index],
            scored.responses,
            rewards=scored.rewards,
            gold=scored.gold,
            temperature=config.rollout.temperature,
            pad_id=eos,
            batch_size=micro,
            device=device,
            precision=config.runtime.precision,
        )
        # Every rank now holds the global batch: advantages, statistics and minibatches are the single-process ones.
        rollout = gather_rollout(rollout, dist, pad_id=eos)
        stopped = all_gather_rows(scored.stopped, dist)
        rollout, advantage_stats = algorithm.advantages(rollout, kl_coef=kl_coef, config=config)

        # b. Epochs over minibatches of one global shuffle of the episodes, each split over the ranks; with PPO-ptx
        #    each step also sees a batch of pretraining blocks, split likewise. Losses are normalised by the global
        #    minibatch (its response tokens for PPO, its responses for RLOO / GRPO).
        totals: dict[str, float] = {}
        shuffle = torch.Generator().manual_seed(config.runtime.seed * 1_000_003 + iteration + 7)
        part = config.train.minibatch_size // dist.world_size
        step_of_iteration = 0
        for _epoch in range(plan.epochs):
            for rows in torch.randperm(len(rollout), generator=shuffle).split(config.train.minibatch_size):
                minibatch = rollout.select(rows.to(device))
                mine = minibatch.select(slice(dist.rank * part, (dist.rank + 1) * part))
                stats = algorithm.backward(
                    policy,
                    value_model,
                    mine,
                    kl_coef=kl_coef,
                    config=config,
                    denominator=per_rank_denominator(algorithm.denominator(minibatch), dist.world_size),
                    on_policy=step_of_iteration == 0,
                    micro_batch_size=micro,
                    temperature=config.rollout.temperature,
                    device=device,
                    precision=config.runtime.precision,
                    sync_policy=config.ptx.coef == 0,
                )
                if config.ptx.coef > 0:
                    blocks = ptx_blocks.ids[ptx_order.next(config.ptx.batch_size)]
                    stats |= ptx_backward(
                        policy,
                        blocks.chunk(dist.world_size)[dist.rank],
                        ptx_coef=config.ptx.coef,
                        micro_batch_size=micro,
                        device=device,
                        precision=config.runtime.precision,
                        num_tokens=per_rank_denominator(blocks.shape[0] * (blocks.shape[1] - 1), dist.world_size),
                    )
                stats["grad_norm"] = optimizer_step(trained, optimizer, scheduler, grad_clip=config.optimizer.grad_clip)
                for key, value in stats.items():  # mean over the iteration's optimizer steps
                    totals[key] = totals.get(key, 0.0) + value / steps_per_iteration
                step_of_iteration += 1
        totals = average_across_ranks(totals, dist)  # each rank's loss shares and token-weighted stat shares

        # c. Log, adapt beta (Ziegler et al. 2019), checkpoint.
        done = iteration + 1
        mask = rollout.response_mask
        record = {f"train/{k}": v for k, v in totals.items()}
        record.update(
            {
                "reward/proxy": rollout.episode_rewards.mean().item(),
                "reward/total": advantage_stats["reward_total"].item(),
                **advantage_stats["log"],
                "kl": advantage_stats["kl"].item(),
                "kl_coef": kl_coef,
                "entropy": masked_mean(rollout.entropy, mask).item(),
                "response/length": mask.sum(1).float().mean().item(),
                "response/stopped": stopped.float().mean().item(),
                "episodes": done * episodes,
            }
        )
        if gold_scorer is not None:
            record["reward/gold"] = rollout.gold.mean().item()
        if val_blocks is not None and run.due(done, every=config.train.checkpoint_every):
            heldout = TokenBlocks(val_blocks, torch.zeros(val_blocks.shape))
            record["ptx/heldout_loss"] = heldout_block_loss(
                unwrap(policy),
                heldout,
                control_ids=control_ids,
                batch_size=micro,
                device=device,
                precision=config.runtime.precision,
            )
        run.log.log(done, record)
        if config.train.log_samples:  # the first episodes of the global batch, whichever rank drew them
            pairs = [
                pair
                for ranks_pairs in all_gather_objects([(prompts[i], t) for i, t in zip(index, scored.texts)], dist)
                for pair in ranks_pairs
            ]
            if dist.is_main:
                prompts_, texts_ = [p for p, _ in pairs], [t for _, t in pairs]
                log_samples(samples_path, run.log, done, prompts_, texts_, rollout, config.train.log_samples)
        if config.kl.target is not None:
            kl_coef = adaptive_kl_coef(
                kl_coef,
                observed_kl=advantage_stats["kl"],
                target_kl=config.kl.target,
                horizon=config.kl.horizon,
                num_steps=episodes,
            )
        run.bar.set_postfix(proxy=f"{record['reward/proxy']:.3f}", kl=f"{record['kl']:.3f}")
        run.bar.update(1)
        if run.due(done, every=config.train.checkpoint_every):  # every rank calls, rank 0 writes
            state = {"step": done, "order": order.state_dict(), "kl_coef": kl_coef}
            if ptx_order is not None:
                state["ptx_order"] = ptx_order.state_dict()
            run.save_checkpoint(
                done,
                model=policy,
                tokenizer=tokenizer,
                extra={} if value_model is None else {"value_model": value_model},
                info={**info, "iterations": done},
                optimizer=optimizer,
                scheduler=scheduler,
                state=state,
            )

    # 5. The final policy, a plain Hugging Face directory.
    final = run.finish(policy, tokenizer, info={**info, "iterations": config.train.iterations, "kl_coef": kl_coef})
    say(f"[{plan.algorithm}] done in {run.elapsed():.0f}s; policy in {final}")
    return final


ppo = group_rl = policy_gradient  # `prefer ppo` and `prefer grpo`: the config says which algorithm
