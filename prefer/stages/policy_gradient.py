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
no value model. An algorithm is one row of `prefer.rl.ALGORITHMS`; everything else is this one loop, which runs a
`PolicyGradientConfig` (algorithm = ppo | rloo | grpo; `prefer ppo`, and `prefer grpo` with GRPO's defaults), also
under `torchrun --nproc_per_node N` for DDP (or FSDP2 with runtime.parallel=fsdp).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch

from prefer import checkpoint_record
from prefer.config import PolicyGradientConfig
from prefer.controls import control_token_ids
from prefer.data.formats import read_prompts
from prefer.data.packing import TokenBlocks
from prefer.errors import PreferError
from prefer.evaluation.capability import heldout_block_loss
from prefer.models.build import check_model_dir
from prefer.objectives import adaptive_kl_coef, masked_mean
from prefer.rl import (
    ALGORITHMS,
    Algorithm,
    PTXBatches,
    log_samples,
    pretraining_blocks,
    read_queries,
    rollout_batch,
    samples_log,
    sampling_chunk,
    update_on_batch,
)
from prefer.rl.policy_models import PolicyModels, load_policy_models
from prefer.run_dir import RESUME_MAY_CHANGE, releases_run_dirs
from prefer.scorers import get_scorer
from prefer.training import (
    BlockOrder,
    all_gather_objects,
    load_trainer_state,
    make_optimizer,
    make_scheduler,
    micro_batch_size,
    restore_optimizer,
    unwrap,
)
from prefer.training.run import StageRun

__all__ = ["group_rl", "policy_gradient", "ppo"]


def _check_before_loading(config, scorer=None, gold_scorer=None) -> tuple[str, object, object]:
    """Prompts, model directories and scorers, checked before any model is loaded: (scorer name, scorer, gold).
    `scorer` / `gold_scorer`: callables given in Python, used instead of resolving the config's names."""
    read_prompts(config.prompts)
    check_model_dir(config.model.init_from, field="model.init_from", causal_lm=True)
    if config.model.reference is not None:
        check_model_dir(config.model.reference, field="model.reference", causal_lm=True)
    if config.reward.model is not None:
        check_model_dir(config.reward.model, field="reward.model")
    scorer_name = config.reward.scorer or f"rm:{config.reward.model}"
    if gold_scorer is None and config.reward.gold_scorer:
        gold_scorer = get_scorer(config.reward.gold_scorer)
    return scorer_name, scorer if scorer is not None else get_scorer(scorer_name), gold_scorer


def _ptx_data(config, tokenizer, context: int):
    """(training blocks, the first `ptx.eval_blocks` held-out blocks [N, T]) of PPO-ptx's pretraining corpus."""
    train, heldout = pretraining_blocks(
        config.ptx.source, tokenizer, block_size=context, max_bytes=config.ptx.max_bytes
    )
    return train, heldout.ids[: config.ptx.eval_blocks]


def _geometry(config, K: int, world_size: int) -> tuple[int, int, int]:
    """(micro-batch, prompts each rank samples per iteration, episodes per sampling chunk), checked against the
    number of ranks."""
    micro = micro_batch_size(
        config.train.minibatch_size, config.train.micro_batch_size, world_size, field="train.minibatch_size"
    )
    for key, value in (("train.batch_size", config.train.batch_size), ("ptx.batch_size", config.ptx.batch_size)):
        if value % world_size and (key != "ptx.batch_size" or config.ptx.coef > 0):
            raise PreferError(f"config: {key} {value} must be a multiple of the number of ranks ({world_size})")
    share = config.train.batch_size // world_size
    if (share * K) % micro:
        raise PreferError(
            f"config: train.micro_batch_size {micro} must divide each rank's episodes per iteration ({share * K})"
        )
    return (
        micro,
        share,
        sampling_chunk(config.rollout.sample_batch_size, micro_batch_size=micro, episodes_per_rank=share * K),
    )


@releases_run_dirs
def policy_gradient(config: PolicyGradientConfig, *, resume: bool = False, scorer=None, gold_scorer=None) -> Path:
    """Run `config.algorithm` (PPO, RLOO or GRPO), with PPO-ptx when ptx.coef > 0; returns the final policy's
    directory (`<out_dir>/final`). From Python, `scorer` and `gold_scorer` may be callables
    (`score(texts) -> list[float]`, misalignment, lower is better; optionally with `score_pairs`) used instead of
    `reward.scorer` / `reward.gold_scorer`, which then only name them in the run's records.

    Under torchrun every rank samples, scores and evaluates all K responses of its contiguous share of each
    iteration's prompts; the episodes are then gathered, so that every rank holds the global batch (whole groups):
    advantages are whitened or grouped over it, the logged statistics and the adaptive KL coefficient are those of
    the global batch, and each minibatch of one global shuffle is split over the ranks (see docs/distributed.md)."""
    algorithm, K = ALGORITHMS[config.algorithm], config.group_size
    # the schedule is constant, so a run may also be extended: train.iterations may change on resume
    run = StageRun(
        config, type(config), resume=resume, name=config.algorithm, may_change=RESUME_MAY_CHANGE | {"iterations"}
    )
    dist, device, checkpoint = run.dist, run.device, run.checkpoint
    scorer_name, scorer, gold_scorer = _check_before_loading(config, scorer, gold_scorer)

    # 1. Models; 2. data: prompts (each must leave room for the response), pretraining blocks for PPO-ptx.
    models = load_policy_models(
        config.model.init_from,
        reference=config.model.reference,
        lora=config.lora,
        critic=config.value_trunk if algorithm.critic else None,
        reward_model=config.reward.model,
        reward_scorer=scorer_name,
        checkpoint=checkpoint,
        dist=dist,
        device=device,
        parallel=config.runtime.parallel,
    )
    tokenizer = models.tokenizer
    prompts, queries = read_queries(
        config.prompts, tokenizer, max_length=models.context - config.rollout.max_new_tokens
    )
    ptx_blocks, val_blocks = (None, None) if config.ptx.source is None else _ptx_data(config, tokenizer, models.context)

    # 3. Batch geometry (prompts per iteration and minibatches are global: all ranks together), optimizer, state.
    micro, share, chunk = _geometry(config, K, dist.world_size)
    episodes = config.train.batch_size * K
    steps_per_iteration = config.train.epochs * episodes // config.train.minibatch_size
    optimizer, scheduler, state = _optimizer_and_state(config, models, checkpoint, steps_per_iteration)
    seed = config.runtime.seed
    order = BlockOrder(len(queries), seed=seed, **state.get("order", {}))
    ptx_order = None if ptx_blocks is None else BlockOrder(len(ptx_blocks), seed=seed + 1, **state.get("ptx_order", {}))
    kl_coef, start = state["kl_coef"], state["step"]
    mixed = ptx_order is not None and config.ptx.coef > 0  # PPO-ptx: pretraining batches in every step
    ptx = PTXBatches(ptx_blocks, ptx_order, config.ptx.coef, config.ptx.batch_size) if mixed else None
    info = _info(config, algorithm, scorer_name)
    run.begin(start=start, total=config.train.iterations, unit="iter")
    samples_path = samples_log(run.run_dir, resume_step=run.resume_step) if dist.is_main else None
    run.say(
        f"[{config.algorithm}] {len(queries)} prompts, {config.train.iterations} iterations of "
        f"{config.train.batch_size} prompts x {K} samples, {steps_per_iteration} optimizer steps each, beta {kl_coef:g}"
        + (f" (adaptive, target KL {config.kl.target:g})" if config.kl.target else "")
        + ("" if algorithm.critic else ", no value model")
        + f", device {device}"
        + (f", {dist.world_size} ranks ({config.runtime.parallel})" if dist.world_size > 1 else "")
    )

    # 4. The loop: a. rollouts; b. the update; c. log, adapt beta (Ziegler et al. 2019), checkpoint.
    # One optimizer step per batch (GRPO): the update's forward is the sampling policy's, so the rollout need not
    # run it for the old log-probs (as TRL does); PPO's and RLOO's rewards read them before the update.
    old_from_update = steps_per_iteration == 1 and not algorithm.rewards_read_logprobs
    sample_batch = _sampler(
        config,
        models,
        run,
        chunk=chunk,
        micro=micro,
        scorers=(scorer, gold_scorer),
        policy_logprobs=not old_from_update,
    )
    update = _updater(
        config, algorithm, models, run, micro=micro, optimizer=optimizer, scheduler=scheduler, ptx=ptx,
        old_logprobs_from_update=old_from_update,
    )  # fmt: skip
    for iteration in range(start, config.train.iterations):
        index = order.next(config.train.batch_size).tolist()[dist.rank * share : (dist.rank + 1) * share]
        index = [i for i in index for _ in range(K)]
        rollout, stopped, scored = sample_batch(
            [prompts[i] for i in index], [queries[i] for i in index], iteration=iteration
        )
        rollout, advantage_stats = algorithm.advantages(rollout, kl_coef=kl_coef, loss=config.loss)
        updating = time.perf_counter()
        totals = update(rollout, kl_coef=kl_coef, shuffle_seed=config.runtime.seed * 1_000_003 + iteration + 7)
        if old_from_update:  # the KL stats again, from the old log-probs the update filled in
            rollout, advantage_stats = algorithm.advantages(rollout, kl_coef=kl_coef, loss=config.loss)
        done = iteration + 1
        record = _record(rollout, totals, advantage_stats, stopped, kl_coef=kl_coef, episodes=done * episodes)
        # where the iteration's wall time went (rank 0's; generation dominates RLHF at scale)
        seconds = scored.seconds | {"update": time.perf_counter() - updating}
        record |= {f"time/{phase}": round(value, 3) for phase, value in seconds.items()}
        record |= {} if gold_scorer is None else {"reward/gold": rollout.gold.mean().item()}
        if val_blocks is not None and run.due(done, every=config.train.checkpoint_every):
            record["ptx/heldout_loss"] = heldout_block_loss(
                unwrap(models.policy),
                TokenBlocks(val_blocks, torch.zeros(val_blocks.shape)),
                control_ids=control_token_ids(tokenizer),  # left out of the held-out LM loss, as in pretraining
                batch_size=micro,
                device=device,
                precision=config.runtime.precision,
            )
        run.log.log(done, record)
        if config.train.log_samples:  # the first episodes of the global batch, whichever rank drew them
            mine = [(prompts[i], text) for i, text in zip(index, scored.texts)]
            pairs = [pair for ranks_pairs in all_gather_objects(mine, dist) for pair in ranks_pairs]
            if dist.is_main:
                texts = ([p for p, _ in pairs], [t for _, t in pairs])
                log_samples(samples_path, run.log, done, *texts, rollout, config.train.log_samples)
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
            extra = {} if models.value_model is None else {"value_model": models.value_model}
            run.save_checkpoint(
                done, model=models.policy, tokenizer=tokenizer, extra=extra, info={**info, "iterations": done},
                optimizer=optimizer, scheduler=scheduler, state=state,
            )  # fmt: skip

    # 5. The final policy, a plain Hugging Face directory.
    info |= {"iterations": config.train.iterations, "kl_coef": kl_coef}
    final = run.finish(models.policy, tokenizer, info=info)
    run.say(f"[{config.algorithm}] done in {run.elapsed():.0f}s; policy in {final}")
    return final


def _sampler(
    config, models: PolicyModels, run: StageRun, *, chunk: int, micro: int, scorers: tuple, policy_logprobs: bool
):
    """rollout_batch(prompts, queries, *, iteration) with this run's models and settings bound."""
    return partial(
        rollout_batch,
        models.policy,
        models.reference,
        models.value_model,
        models.tokenizer,
        dist=run.dist,
        chunk=chunk,
        seed=config.runtime.seed,
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=config.rollout.temperature,
        scorer=scorers[0],
        gold_scorer=scorers[1],
        missing_eos_penalty=config.reward.missing_eos_penalty,
        batch_size=micro,
        device=run.device,
        precision=config.runtime.precision,
        policy_logprobs=policy_logprobs,
    )


def _updater(
    config,
    algorithm: Algorithm,
    models: PolicyModels,
    run: StageRun,
    *,
    micro,
    optimizer,
    scheduler,
    ptx,
    old_logprobs_from_update: bool,
):
    """update_on_batch(rollout, *, kl_coef, shuffle_seed) with this run's models, optimizer and settings bound."""
    return partial(
        update_on_batch,
        algorithm,
        policy=models.policy,
        value_model=models.value_model,
        loss=config.loss,
        epochs=config.train.epochs,
        minibatch_size=config.train.minibatch_size,
        micro_batch_size=micro,
        temperature=config.rollout.temperature,
        device=run.device,
        precision=config.runtime.precision,
        dist=run.dist,
        optimizer=optimizer,
        scheduler=scheduler,
        grad_clip=config.optimizer.grad_clip,
        ptx=ptx,
        old_logprobs_from_update=old_logprobs_from_update,
    )


def _optimizer_and_state(config, models: PolicyModels, checkpoint, steps_per_iteration: int):
    """AdamW over the policy (and critic) at a constant rate (PPO's step size is set by the clip), and the trainer
    state to start from: the checkpoint's (optimizer, schedule restored) or a fresh one."""
    optimizer = make_optimizer(
        models.trained,
        lr=config.optimizer.lr,
        weight_decay=config.optimizer.weight_decay,
        betas=(config.optimizer.beta1, config.optimizer.beta2),
    )
    scheduler = make_scheduler(
        optimizer, total_steps=config.train.iterations * steps_per_iteration, warmup_steps=1, min_lr_fraction=1.0
    )
    if checkpoint is None:
        return optimizer, scheduler, {"step": 0, "kl_coef": config.kl.coef}
    state = load_trainer_state(checkpoint)
    restore_optimizer(checkpoint, state, optimizer, scheduler, modules=models.trained)
    return optimizer, scheduler, state


def _record(rollout, totals: dict, advantage_stats: dict, stopped, *, kl_coef: float, episodes: int) -> dict:
    """The iteration's metrics: the update's averages, rewards, KL, entropy, response lengths."""
    mask = rollout.response_mask
    record = {f"train/{k}": v for k, v in totals.items()}
    record |= {
        "reward/proxy": rollout.episode_rewards.mean().item(),
        "reward/total": advantage_stats["reward_total"].item(),
        **advantage_stats["log"],
        "kl": advantage_stats["kl"].item(),
        "kl_coef": kl_coef,
        "entropy": masked_mean(rollout.entropy, mask).item(),
        "response/length": mask.sum(1).float().mean().item(),
        "response/stopped": stopped.float().mean().item(),
        "episodes": episodes,
    }
    return record


def _info(config, algorithm: Algorithm, scorer_name: str) -> dict:
    """prefer.json of the policy: the SFT model's, and what trained it."""
    info = {
        **checkpoint_record.read(config.model.init_from).as_dict(),
        "stage": config.algorithm,
        "init_from": config.model.init_from,
        "scorer": scorer_name,
        "gold_scorer": config.reward.gold_scorer,
        "ptx_coef": config.ptx.coef,
    }
    if not algorithm.critic:
        info |= {"reference": config.model.reference or config.model.init_from, "group_size": config.group_size}
    elif config.model.reference is not None:  # PPO's reference is its starting point unless named
        info["reference"] = config.model.reference
    return info


ppo = group_rl = policy_gradient  # the names of `prefer ppo` and `prefer grpo`: config.algorithm says which runs
