"""PPO against a scorer or reward model, with a per-token KL penalty to the SFT model, and PPO-ptx: one loop.

    prompts -> KV-cached rollouts of the policy -> proxy reward (+ gold score, logged only) -> per-token KL
    penalty to the frozen SFT reference -> GAE, whitened advantages -> PPO epochs of clipped policy + value
    losses (+ ptx_coef x LM loss on pretraining blocks) -> checkpoints -> <out_dir>/final

Objective (Ouyang et al. 2022, Eq. 2), maximised:
    E_(x,y)~pi_RL [ r(x, y) - beta log(pi_RL(y|x) / pi_SFT(y|x)) ] + gamma E_x~D_pretrain [ log pi_RL(x) ]
optimised with the clipped surrogate of Schulman et al. 2017, Eq. 7. `prefer ppo` calls `ppo(config)`; run it
under `torchrun --nproc_per_node N` for DDP (or FSDP2 with parallel=fsdp).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefer.config import PPOConfig, save_config
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
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
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
    MetricsLog,
    accumulate_stats,
    all_gather_objects,
    all_gather_rows,
    autocast,
    average_across_ranks,
    check_checkpoint_vocabulary,
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

__all__ = ["ppo", "ppo_backward", "ptx_backward", "build_value_model", "sample_responses", "gather_rollout"]


# ------------------------------------------------------------------ gradients of one optimizer step


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


# ------------------------------------------------------------------ models and data


def build_value_model(init_from: str, reward_model: str | None) -> ValueModel:
    """The critic: the reward model's trunk and score head (InstructGPT), else the SFT trunk and a zero head."""
    if reward_model is None:
        trunk = load_model(init_from).base_model
        return ValueModel(trunk, ValueHead(trunk.config.hidden_size))
    from transformers import AutoModelForSequenceClassification

    try:
        rm = AutoModelForSequenceClassification.from_pretrained(reward_model, num_labels=1)
    except Exception as error:  # transformers raises many types; the user needs the path and the cause
        raise PreferError(f"reward_model: cannot load a reward model from {reward_model}: {error}") from error
    head = ValueHead(rm.config.hidden_size)
    score = rm.score if hasattr(rm, "score") else rm.get_output_embeddings()
    with torch.no_grad():
        head.linear.weight.copy_(score.weight)
        if getattr(score, "bias", None) is not None:
            head.linear.bias.copy_(score.bias)
        info_path = Path(reward_model) / "prefer.json"  # `prefer reward` keeps its mean-zero bias there
        if info_path.exists():
            head.linear.bias += float(json.loads(info_path.read_text()).get("reward_bias", 0.0))
    return ValueModel(rm.base_model, head)


# ------------------------------------------------------------------ the stage


@releases_run_dirs
def ppo(config: PPOConfig, *, resume: bool = False) -> Path:
    """Run PPO (PPO-ptx with ptx_coef > 0); returns the directory of the final policy (`<out_dir>/final`).

    Under torchrun every rank samples, scores and evaluates its contiguous share of each iteration's prompts; the
    episodes are then gathered, so that every rank holds the global batch: advantages are whitened over it, the
    logged statistics and the adaptive KL coefficient are those of the global batch, and each minibatch of the
    global shuffle is split over the ranks for the update (see docs/distributed.md)."""
    dist, device = init_distributed(config.runtime.device)
    run_dir = Path(config.out_dir)
    # PPO's schedule is constant, so a run may also be extended: train.iterations may change on resume
    checkpoint = check_run_dir(run_dir, PPOConfig, config, resume, may_change=RESUME_MAY_CHANGE | {"iterations"})
    set_seed(config.runtime.seed)
    say = print if config.runtime.progress and dist.is_main else (lambda *a, **k: None)

    # Prompts, model directories and scorer names are checked before any model is loaded.
    read_prompts(config.prompts)
    check_model_dir(config.init_from, field="init_from")
    if config.reward.model is not None:
        check_model_dir(config.reward.model, field="reward.model")
    scorer = get_scorer(config.reward.scorer or f"rm:{config.reward.model}")
    gold_scorer = get_scorer(config.reward.gold_scorer) if config.reward.gold_scorer else None

    # 1. Models: the policy starts as the SFT model, which also stays as the frozen reference.
    tokenizer = load_tokenizer(config.init_from, field="init_from")
    if checkpoint is not None:
        check_checkpoint_vocabulary(checkpoint, load_tokenizer(checkpoint / "model", field="checkpoint"), tokenizer)
    policy = prepare(
        load_model(model_source(config.init_from, checkpoint, config.lora), tokenizer=tokenizer),
        config.lora,
        checkpoint=checkpoint,
    )
    # LoRA: the reference is the policy's own trunk with the adapters off (one model in memory, not two)
    reference = FrozenView(policy) if config.lora.enabled else load_model(config.init_from, tokenizer=tokenizer)
    reference.requires_grad_(False)
    if config.reward.model is not None:
        check_same_vocabulary(
            tokenizer, load_tokenizer(config.reward.model), what=f"reward.model {config.reward.model}"
        )
    if config.reward.scorer is not None and config.reward.scorer.startswith("rm:"):
        check_same_vocabulary(
            tokenizer,
            load_tokenizer(config.reward.scorer.removeprefix("rm:")),
            what=f"reward.scorer {config.reward.scorer}",
        )
    if config.value_trunk == "shared":
        if dist.world_size > 1:
            raise PreferError("config: value_trunk: shared runs in one process; under torchrun use separate")
        value_model = SharedTrunkValueModel(policy)
    else:
        value_model = build_value_model(config.init_from, config.reward.model)
        prepare(value_model.trunk, config.lora)  # its own adapters; the head stays trainable
    if checkpoint is not None:
        from safetensors.torch import load_file

        value_model.load_state_dict(load_file(checkpoint / "model" / "value_model.safetensors"))
    # Dropout off everywhere, always (eval mode): rollouts, log-prob recomputation and the update then see the same
    # function, so the first PPO ratio is 1 and the KL measures the policy, not dropout noise. Gradients still flow.
    for model in (policy, reference, value_model):
        model.to(device).eval()
    context = context_length(policy)
    policy = wrap_model(policy, dist, device, parallel=config.runtime.parallel)
    value_model = wrap_model(value_model, dist, device, parallel=config.runtime.parallel)
    if config.runtime.parallel == "fsdp":  # no gradients, so nothing for DDP to do; FSDP2 shards its weights too
        reference = wrap_model(reference, dist, device, parallel="fsdp")
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

    # 3. Optimizer over policy and critic; batch geometry (batch and minibatch are global: all ranks together).
    micro = micro_batch_size(
        config.train.minibatch_size, config.train.micro_batch_size, dist.world_size, field="train.minibatch_size"
    )
    if config.ptx.coef > 0 and config.ptx.batch_size % dist.world_size:
        raise PreferError(
            f"config: ptx.batch_size {config.ptx.batch_size} must be a multiple of the number of "
            f"ranks ({dist.world_size})"
        )
    share = config.train.batch_size // dist.world_size  # episodes each rank samples per iteration
    chunk = sampling_chunk(config.rollout.sample_batch_size, micro_batch_size=micro, episodes_per_rank=share)
    steps_per_iteration = config.train.ppo_epochs * config.train.batch_size // config.train.minibatch_size
    optimizer = make_optimizer(
        [policy, value_model],
        lr=config.optimizer.lr,
        weight_decay=config.optimizer.weight_decay,
        betas=(config.optimizer.beta1, config.optimizer.beta2),
    )
    scheduler = make_scheduler(
        optimizer, total_steps=config.train.iterations * steps_per_iteration, warmup_steps=1, min_lr_fraction=1.0
    )  # constant: PPO's step size is set by the clip
    order = BlockOrder(len(queries), seed=config.runtime.seed)
    ptx_order = BlockOrder(len(ptx_blocks), seed=config.runtime.seed + 1) if ptx_blocks is not None else None
    kl_coef = config.kl.coef
    start = 0
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        restore_optimizer(checkpoint, state, optimizer, scheduler, modules=[policy, value_model])
        order = BlockOrder(len(queries), seed=config.runtime.seed, **state["order"])
        if ptx_order is not None:
            ptx_order = BlockOrder(len(ptx_blocks), seed=config.runtime.seed + 1, **state["ptx_order"])
        kl_coef, start = state["kl_coef"], state["step"]
    sft_info_path = Path(config.init_from) / "prefer.json"
    info = {
        **(json.loads(sft_info_path.read_text()) if sft_info_path.exists() else {}),
        "stage": "ppo",
        "init_from": config.init_from,
        "scorer": config.reward.scorer or f"rm:{config.reward.model}",
        "gold_scorer": config.reward.gold_scorer,
        "ptx_coef": config.ptx.coef,
    }
    log = MetricsLog(run_dir, enabled=dist.is_main, resume_step=start if checkpoint else None)
    samples_path = None
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
        samples_path = samples_log(run_dir, resume_step=start if checkpoint else None)
    say(
        f"[ppo] {len(queries)} prompts, {config.train.iterations} iterations of {config.train.batch_size} episodes, "
        f"{steps_per_iteration} optimizer steps each, beta {kl_coef:g}"
        + (f" (adaptive, target KL {config.kl.target:g})" if config.kl.target else "")
        + f", device {device}"
        + (f", {dist.world_size} ranks ({config.runtime.parallel})" if dist.world_size > 1 else "")
    )
    bar = tqdm(
        total=config.train.iterations,
        initial=start,
        desc="ppo",
        unit="iter",
        disable=not (config.runtime.progress and dist.is_main),
    )
    started = time.perf_counter()

    # 4. The loop.
    for iteration in range(start, config.train.iterations):
        # a. Rollouts of this rank's share of the global batch: KV-cached samples at the training temperature,
        #    truncated at eos, seeded by (iteration, micro-batch), so a resumed run (or another number of ranks)
        #    draws the same episodes.
        index = order.next(config.train.batch_size).tolist()[dist.rank * share : (dist.rank + 1) * share]
        with unsharded(policy):  # FSDP2: ranks stop sampling at different steps, so no collective per step
            sampled = sample_responses(
                unwrap(policy),
                [queries[i] for i in index],
                first=dist.rank * share,
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
            unwrap(value_model),
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
        # Every rank now holds the global batch: whitening, statistics and minibatches are the single-process ones.
        rollout = gather_rollout(rollout, dist, pad_id=eos)
        stopped = all_gather_rows(stopped, dist)
        rollout, kl_stats = add_advantages(rollout, kl_coef=kl_coef, gamma=config.ppo.gamma, lam=config.ppo.lam)
        # Explained variance of the rollout-time values over the whole batch (not additive over micro-batches).
        value_explained = explained_variance(rollout.values, rollout.returns, rollout.response_mask).item()

        # b. PPO epochs over minibatches of one global shuffle, each split over the ranks; with PPO-ptx each step
        #    also sees a batch of pretraining blocks, split likewise. Losses are normalised by the global minibatch.
        totals: dict[str, float] = {}
        shuffle = torch.Generator().manual_seed(config.runtime.seed * 1_000_003 + iteration + 7)
        part = config.train.minibatch_size // dist.world_size
        for _epoch in range(config.train.ppo_epochs):
            for rows in torch.randperm(len(rollout), generator=shuffle).split(config.train.minibatch_size):
                minibatch = rollout.select(rows.to(device))
                mine = minibatch.select(slice(dist.rank * part, (dist.rank + 1) * part))
                stats = ppo_backward(
                    policy,
                    value_model,
                    mine,
                    micro_batch_size=micro,
                    temperature=config.rollout.temperature,
                    clip_range=config.ppo.clip_range,
                    value_clip_range=config.ppo.value_clip_range,
                    vf_coef=config.ppo.vf_coef,
                    device=device,
                    precision=config.runtime.precision,
                    num_tokens=per_rank_denominator(minibatch.response_mask.sum().item(), dist.world_size),
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
                    [policy, value_model], optimizer, scheduler, grad_clip=config.optimizer.grad_clip
                )
                for key, value in stats.items():  # mean over the iteration's optimizer steps
                    totals[key] = totals.get(key, 0.0) + value / steps_per_iteration
        totals = average_across_ranks(totals, dist)  # each rank's loss shares and token-weighted stat shares

        # c. Log, adapt beta (Ziegler et al. 2019), checkpoint.
        done = iteration + 1
        mask = rollout.response_mask
        record = {f"train/{k}": v for k, v in totals.items()}
        record.update(
            {
                "reward/proxy": rollout.episode_rewards.mean().item(),
                "reward/total": kl_stats["reward_mean"].item(),
                "kl": kl_stats["kl"].item(),
                "kl_coef": kl_coef,
                "entropy": masked_mean(rollout.entropy, mask).item(),
                "response/length": mask.sum(1).float().mean().item(),
                "response/stopped": stopped.float().mean().item(),
                "value/explained_variance": value_explained,
                "episodes": done * config.train.batch_size,
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
        if config.train.log_samples:  # the first episodes of the global batch, whichever rank drew them
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
                observed_kl=kl_stats["kl"],
                target_kl=config.kl.target,
                horizon=config.kl.horizon,
                num_steps=config.train.batch_size,
            )
        bar.set_postfix(proxy=f"{record['reward/proxy']:.3f}", kl=f"{record['kl']:.3f}")
        bar.update(1)
        if (
            done % config.train.checkpoint_every == 0 or done == config.train.iterations
        ):  # every rank calls, rank 0 writes
            state = {"step": done, "order": order.state_dict(), "kl_coef": kl_coef}
            if ptx_order is not None:
                state["ptx_order"] = ptx_order.state_dict()
            save_checkpoint(
                run_dir,
                done,
                model=policy,
                tokenizer=tokenizer,
                extra={"value_model": value_model},
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
    say(f"[ppo] done in {time.perf_counter() - started:.0f}s; policy in {final}")
    return final
