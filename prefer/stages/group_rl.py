"""Critic-free RL against a scorer or reward model (RLOO, GRPO), with the KL to the SFT model and PPO-ptx: one loop.

    prompts -> K KV-cached samples of the policy per prompt -> proxy reward (+ gold, logged only)
    -> RLOO: reward - beta KL, leave-one-out baseline | GRPO: group-normalised scores
    -> epochs over minibatches: REINFORCE (RLOO) or the clipped ratio + beta k3 KL loss (GRPO) (+ ptx_coef x LM
       loss on pretraining blocks) -> checkpoints -> <out_dir>/final

No value model is loaded: the baseline of a response is the other responses to its prompt (Ahmadian et al. 2024;
Shao et al. 2024). `prefer grpo` calls `group_rl(config)`; run it under `torchrun --nproc_per_node N` for DDP (or
FSDP2 with runtime.parallel=fsdp).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from prefer.config import GroupRLConfig, save_config
from prefer.data.packing import TokenBlocks
from prefer.errors import PreferError
from prefer.evaluation.capability import heldout_block_loss
from prefer.models.build import check_same_vocabulary, context_length, control_token_ids, load_model, load_tokenizer
from prefer.models.lora import FrozenView, model_source, prepare
from prefer.objectives import (
    adaptive_kl_coef,
    grpo_advantages,
    grpo_loss,
    masked_mean,
    masked_sum,
    rloo_advantages,
    rloo_loss,
    token_logprobs,
)
from prefer.rollouts import (
    Rollout,
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
    MetricsLog,
    accumulate_stats,
    all_gather_objects,
    all_gather_rows,
    autocast,
    average_across_ranks,
    check_run_dir,
    gradient_sync,
    init_distributed,
    load_trainer_state,
    make_optimizer,
    make_scheduler,
    micro_batch_size,
    optimizer_step,
    per_rank_denominator,
    restore_optimizer,
    save_checkpoint,
    save_model,
    set_seed,
    unsharded,
    unwrap,
    wrap_model,
)

__all__ = ["ALGORITHMS", "group_rl", "group_backward", "group_advantages"]


# ------------------------------------------------------------------ the algorithms, by name


class Algorithm(NamedTuple):
    """advantages(scores [G, K], kl [G, K], kl_coef, config) -> [G, K]; loss(part, logprobs, kl_coef, config,
    num_sequences) -> (loss, stats)."""

    advantages: Callable
    loss: Callable


ALGORITHMS: dict[str, Algorithm] = {
    # RLOO: the KL penalty folded into the reward, as PPO does; REINFORCE on the whole response
    "rloo": Algorithm(
        advantages=lambda scores, kl, kl_coef, group: rloo_advantages(scores - kl_coef * kl),
        loss=lambda part, logprobs, kl_coef, group, num_sequences: rloo_loss(
            logprobs, part.advantages[:, 0], part.response_mask, num_sequences=num_sequences
        ),
    ),
    # GRPO: advantages from the scores alone; the KL is a loss term (k3)
    "grpo": Algorithm(
        advantages=lambda scores, kl, kl_coef, group: grpo_advantages(scores, scale=group.scale),
        loss=lambda part, logprobs, kl_coef, group, num_sequences: grpo_loss(
            logprobs,
            part.logprobs,
            part.ref_logprobs,
            part.advantages[:, 0],
            part.response_mask,
            clip_range=group.clip_range,
            kl_coef=kl_coef,
            num_sequences=num_sequences,
        ),
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
        ALGORITHMS[algorithm].advantages(scores.view(-1, group_size), kl.view(-1, group_size), kl_coef, group).flatten()
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
) -> dict[str, float]:
    """Accumulate the gradient of the algorithm's loss over one minibatch, normalised by `num_sequences` (the
    responses of the optimizer step's whole minibatch, None = this one's; under torchrun that count divided by the
    number of ranks), so that micro-batches and ranks do not change the step. Returns the loss shares and the
    response-weighted stats."""
    num_sequences = len(minibatch) if num_sequences is None else num_sequences
    totals: dict[str, float] = {}
    starts = range(0, len(minibatch), micro_batch_size)
    for start in starts:
        part = minibatch.select(slice(start, start + micro_batch_size))
        with gradient_sync([policy], sync=start == starts[-1] and sync_policy):
            with autocast(device, precision):
                logits = policy_logits(policy, part)
            logprobs = token_logprobs(logits.float(), part.response, temperature=temperature)
            loss, stats = ALGORITHMS[algorithm].loss(part, logprobs, kl_coef, group, num_sequences)
            loss.backward()
        accumulate_stats(totals, {f"policy/{k}": v for k, v in stats.items()}, fraction=len(part) / num_sequences)
    return totals


# ------------------------------------------------------------------ the stage


@releases_run_dirs
def group_rl(config: GroupRLConfig, *, resume: bool = False) -> Path:
    """Run RLOO or GRPO (with PPO-ptx when ptx.coef > 0); returns the final policy's directory (`<out_dir>/final`).

    Under torchrun every rank samples and scores all K responses of its contiguous share of each iteration's
    prompts; the episodes are then gathered so that every rank holds the global batch (whole groups), and each
    minibatch of one global shuffle is split over the ranks for the update, as in `prefer ppo`."""
    dist, device = init_distributed(config.runtime.device)
    run_dir = Path(config.out_dir)
    # the schedule is constant, so a run may also be extended: train.iterations may change on resume
    checkpoint = check_run_dir(run_dir, GroupRLConfig, config, resume, may_change=RESUME_MAY_CHANGE | {"iterations"})
    set_seed(config.runtime.seed)
    say = print if config.runtime.progress and dist.is_main else (lambda *a, **k: None)
    algorithm, group_size = config.group.algorithm, config.group.size
    name = f"[{algorithm}]"

    # 1. Models: the policy starts as the SFT model, which (or `reference`) stays as the frozen reference. No critic.
    reference_path = config.reference or config.init_from
    for field, path in (("init_from", config.init_from), ("reference", reference_path)):
        if not (Path(path) / "config.json").is_file():
            raise PreferError(f"{field}: {path} is not a Hugging Face model directory (no config.json)")
    tokenizer = load_tokenizer(config.init_from)
    if config.reference is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(reference_path), what=f"reference {reference_path}")
    scorer_name = config.reward.scorer or f"rm:{config.reward.model}"
    if scorer_name.startswith("rm:"):
        check_same_vocabulary(tokenizer, load_tokenizer(scorer_name.removeprefix("rm:")), what=f"reward {scorer_name}")
    policy = prepare(
        load_model(model_source(config.init_from, checkpoint, config.lora), tokenizer=tokenizer),
        config.lora,
        checkpoint=checkpoint,
    )
    # LoRA against the SFT model: the reference is the policy's own trunk with the adapters off (one model, not two)
    shared = config.lora.enabled and config.reference is None
    reference = FrozenView(policy) if shared else load_model(reference_path, tokenizer=tokenizer)
    reference.requires_grad_(False)
    for model in (policy, reference):  # dropout off: the first ratio is exactly 1, the KL measures the policy
        model.to(device).eval()
    context = context_length(policy)
    policy = wrap_model(policy, dist, device, parallel=config.runtime.parallel)
    if config.runtime.parallel == "fsdp":
        reference = wrap_model(reference, dist, device, parallel="fsdp")
    scorer = get_scorer(scorer_name)
    gold_scorer = get_scorer(config.reward.gold_scorer) if config.reward.gold_scorer else None
    eos = tokenizer.eos_token_id
    control_ids = control_token_ids(tokenizer)

    # 2. Data: prompts, pretraining blocks for PPO-ptx.
    prompts, queries = read_queries(config.prompts, tokenizer, max_length=context - config.rollout.max_new_tokens)
    ptx_blocks = val_blocks = None
    if config.ptx.source is not None:
        ptx_blocks, val_blocks = pretraining_blocks(
            config.ptx.source, tokenizer, block_size=context, max_bytes=config.ptx.max_bytes
        )
        val_blocks = val_blocks.ids[: config.ptx.eval_blocks]

    # 3. Batch geometry: prompts per iteration are global; each rank samples its share's K responses each.
    micro = micro_batch_size(
        config.train.minibatch_size, config.train.micro_batch_size, dist.world_size, field="train.minibatch_size"
    )
    if config.train.batch_size % dist.world_size:
        raise PreferError(
            f"config: train.batch_size {config.train.batch_size} must be a multiple of the number of "
            f"ranks ({dist.world_size})"
        )
    if config.ptx.coef > 0 and config.ptx.batch_size % dist.world_size:
        raise PreferError(
            f"config: ptx.batch_size {config.ptx.batch_size} must be a multiple of the number of "
            f"ranks ({dist.world_size})"
        )
    episodes = config.train.batch_size * group_size
    share = config.train.batch_size // dist.world_size  # prompts each rank samples per iteration
    if (share * group_size) % micro:
        raise PreferError(
            f"config: train.micro_batch_size {micro} must divide each rank's episodes per iteration "
            f"({share * group_size})"
        )
    chunk = sampling_chunk(
        config.rollout.sample_batch_size, micro_batch_size=micro, episodes_per_rank=share * group_size
    )
    steps_per_iteration = config.train.epochs * episodes // config.train.minibatch_size
    optimizer = make_optimizer(
        [policy],
        lr=config.optimizer.lr,
        weight_decay=config.optimizer.weight_decay,
        betas=(config.optimizer.beta1, config.optimizer.beta2),
    )
    scheduler = make_scheduler(
        optimizer, total_steps=config.train.iterations * steps_per_iteration, warmup_steps=1, min_lr_fraction=1.0
    )
    order = BlockOrder(len(queries), seed=config.runtime.seed)
    ptx_order = BlockOrder(len(ptx_blocks), seed=config.runtime.seed + 1) if ptx_blocks is not None else None
    kl_coef = config.kl.coef
    start = 0
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        restore_optimizer(checkpoint, state, optimizer, scheduler, modules=[policy])
        order = BlockOrder(len(queries), seed=config.runtime.seed, **state["order"])
        if ptx_order is not None:
            ptx_order = BlockOrder(len(ptx_blocks), seed=config.runtime.seed + 1, **state["ptx_order"])
        kl_coef, start = state["kl_coef"], state["step"]
    sft_info_path = Path(config.init_from) / "prefer.json"
    info = {
        **(json.loads(sft_info_path.read_text()) if sft_info_path.exists() else {}),
        "stage": algorithm,
        "init_from": config.init_from,
        "reference": reference_path,
        "scorer": scorer_name,
        "gold_scorer": config.reward.gold_scorer,
        "ptx_coef": config.ptx.coef,
        "group_size": group_size,
    }
    log = MetricsLog(run_dir, enabled=dist.is_main, resume_step=start if checkpoint else None)
    samples_path = None
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
        samples_path = samples_log(run_dir, resume_step=start if checkpoint else None)
    say(
        f"{name} {len(queries)} prompts, {config.train.iterations} iterations of {config.train.batch_size} prompts x "
        f"{group_size} samples, {steps_per_iteration} optimizer steps each, beta {kl_coef:g}, no value model, "
        f"device {device}" + (f", {dist.world_size} ranks ({config.runtime.parallel})" if dist.world_size > 1 else "")
    )
    bar = tqdm(
        total=config.train.iterations,
        initial=start,
        desc=algorithm,
        unit="iter",
        disable=not (config.runtime.progress and dist.is_main),
    )
    started = time.perf_counter()

    # 4. The loop.
    for iteration in range(start, config.train.iterations):
        # a. K samples of each of this rank's prompts (prompt-major: a prompt's group is contiguous), seeded by
        #    (iteration, micro-batch of the global batch), so a resumed run or another number of ranks draws the same.
        index = order.next(config.train.batch_size).tolist()[dist.rank * share : (dist.rank + 1) * share]
        index = [i for i in index for _ in range(group_size)]
        with unsharded(policy):
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
        stopped, texts = scored.stopped, scored.texts
        rollout = make_rollout(
            unwrap(policy),
            reference,
            None,
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
        rollout = gather_rollout(rollout, dist, pad_id=eos)  # whole groups, in rank order: the global batch
        stopped = all_gather_rows(stopped, dist)
        rollout, group_stats = group_advantages(
            rollout, algorithm=algorithm, group_size=group_size, kl_coef=kl_coef, group=config.group
        )

        # b. Epochs over minibatches of one global shuffle of the episodes, each split over the ranks.
        totals: dict[str, float] = {}
        shuffle = torch.Generator().manual_seed(config.runtime.seed * 1_000_003 + iteration + 7)
        part = config.train.minibatch_size // dist.world_size
        for _ in range(config.train.epochs):
            for rows in torch.randperm(len(rollout), generator=shuffle).split(config.train.minibatch_size):
                minibatch = rollout.select(rows.to(device))
                mine = minibatch.select(slice(dist.rank * part, (dist.rank + 1) * part))
                stats = group_backward(
                    policy,
                    mine,
                    algorithm=algorithm,
                    group=config.group,
                    kl_coef=kl_coef,
                    micro_batch_size=micro,
                    temperature=config.rollout.temperature,
                    device=device,
                    precision=config.runtime.precision,
                    num_sequences=per_rank_denominator(len(minibatch), dist.world_size),
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
                stats["grad_norm"] = optimizer_step(
                    [policy], optimizer, scheduler, grad_clip=config.optimizer.grad_clip
                )
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value / steps_per_iteration
        totals = average_across_ranks(totals, dist)

        # c. Log, adapt beta, checkpoint.
        done = iteration + 1
        mask = rollout.response_mask
        record = {f"train/{k}": v for k, v in totals.items()}
        record.update(
            {
                "reward/proxy": rollout.episode_rewards.mean().item(),
                "reward/total": group_stats["reward_total"].item(),
                "reward/group_std": group_stats["group_std"].item(),
                "kl": group_stats["kl"].item(),
                "kl_coef": kl_coef,
                "entropy": masked_mean(rollout.entropy, mask).item(),
                "response/length": mask.sum(1).float().mean().item(),
                "response/stopped": stopped.float().mean().item(),
                "episodes": done * episodes,
            }
        )
        if gold_scorer is not None:
            record["reward/gold"] = rollout.gold.mean().item()
        if val_blocks is not None and (done % config.train.checkpoint_every == 0 or done == config.train.iterations):
            heldout = TokenBlocks(val_blocks, torch.zeros(val_blocks.shape))
            record["ptx/heldout_loss"] = heldout_block_loss(
                unwrap(policy),
                heldout,
                control_ids=control_ids,
                batch_size=micro,
                device=device,
                precision=config.runtime.precision,
            )
        log.log(done, record)
        if config.train.log_samples:
            pairs = [
                pair
                for ranks_pairs in all_gather_objects([(prompts[i], t) for i, t in zip(index, texts)], dist)
                for pair in ranks_pairs
            ]
            if dist.is_main:
                log_samples(
                    samples_path,
                    log,
                    done,
                    [p for p, _ in pairs],
                    [t for _, t in pairs],
                    rollout,
                    config.train.log_samples,
                )
        if config.kl.target is not None:
            kl_coef = adaptive_kl_coef(
                kl_coef,
                observed_kl=group_stats["kl"],
                target_kl=config.kl.target,
                horizon=config.kl.horizon,
                num_steps=episodes,
            )
        bar.set_postfix(proxy=f"{record['reward/proxy']:.3f}", kl=f"{record['kl']:.3f}")
        bar.update(1)
        if done % config.train.checkpoint_every == 0 or done == config.train.iterations:
            state = {"step": done, "order": order.state_dict(), "kl_coef": kl_coef}
            if ptx_order is not None:
                state["ptx_order"] = ptx_order.state_dict()
            save_checkpoint(
                run_dir,
                done,
                model=policy,
                tokenizer=tokenizer,
                extra={},
                info={**info, "iterations": done},
                optimizer=optimizer,
                scheduler=scheduler,
                state=state,
            )
    bar.close()
    log.close()

    # 5. The final policy, a plain Hugging Face directory (every rank calls save_model, rank 0 writes).
    final = run_dir / "final"
    save_model(final, policy, tokenizer, info={**info, "iterations": config.train.iterations, "kl_coef": kl_coef})
    say(f"{name} done in {time.perf_counter() - started:.0f}s; policy in {final}")
    return final
