"""PPO against a scorer or reward model, with a per-token KL penalty to the SFT model, and PPO-ptx: one loop.

    prompts -> KV-cached rollouts of the policy -> proxy reward (+ gold score, logged only) -> per-token KL
    penalty to the frozen SFT reference -> GAE, whitened advantages -> PPO epochs of clipped policy + value
    losses (+ ptx_coef x LM loss on pretraining blocks) -> checkpoints -> <out_dir>/final

Objective (Ouyang et al. 2022, Eq. 2), maximised:
    E_(x,y)~pi_RL [ r(x, y) - beta log(pi_RL(y|x) / pi_SFT(y|x)) ] + gamma E_x~D_pretrain [ log pi_RL(x) ]
optimised with the clipped surrogate of Schulman et al. 2017, Eq. 7. `prefer ppo` calls `ppo(config)`.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefer.config import PPOConfig, save_config
from prefer.data.annotate import AnnotatedDocument
from prefer.data.corpora import load_documents, split_by_source
from prefer.data.formats import read_prompts, record_locations
from prefer.data.packing import TokenBlocks, pack_documents
from prefer.errors import PreferError
from prefer.io import atomic_path
from prefer.models.build import check_same_vocabulary, control_token_ids, load_model, load_tokenizer
from prefer.models.heads import ValueHead
from prefer.objectives import (
    adaptive_kl_coef,
    masked_mean,
    mle_loss,
    next_token_targets,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
)
from prefer.rollouts import Rollout, ValueModel, add_advantages, make_rollout, policy_logits
from prefer.sampling import sample
from prefer.scorers import get_scorer
from prefer.stages.pretrain import heldout_loss
from prefer.training import (
    BlockOrder,
    MetricsLog,
    accumulate_stats,
    autocast,
    check_run_dir,
    load_trainer_state,
    make_optimizer,
    make_scheduler,
    resolve_device,
    restore_rng_state,
    save_checkpoint,
    save_model,
    set_seed,
)

__all__ = ["ppo", "ppo_backward", "ptx_backward", "build_value_model"]


# ------------------------------------------------------------------ gradients of one optimizer step

def ppo_backward(policy, value_model, minibatch: Rollout, *, micro_batch_size: int, temperature: float,
                 clip_range: float, value_clip_range: float, vf_coef: float, device, precision: str
                 ) -> dict[str, float]:
    """Accumulate the gradient of (clipped policy loss + vf_coef x clipped value loss) over one minibatch.

    Both losses are normalised by the minibatch's response-token count, whatever the micro-batch size, so that
    1 micro-batch of 8 and 8 of 1 give the same gradient. Log-probs use the sampling temperature, like the old
    ones. Returns the minibatch's stats (loss terms summed, other stats token-weighted means)."""
    num_tokens = minibatch.response_mask.sum().item()
    totals: dict[str, float] = {}
    for start in range(0, len(minibatch), micro_batch_size):
        part = minibatch.select(slice(start, start + micro_batch_size))
        with autocast(device, precision):
            logits = policy_logits(policy, part)
            values = value_model(part)
        logprobs = token_logprobs(logits.float(), part.response, temperature=temperature)
        pg_loss, pg_stats = ppo_policy_loss(logprobs, part.logprobs, part.advantages, part.response_mask,
                                            clip_range=clip_range, num_tokens=num_tokens)
        vf_loss, vf_stats = ppo_value_loss(values.float(), part.values, part.returns, part.response_mask,
                                           clip_range=value_clip_range, num_tokens=num_tokens)
        (pg_loss + vf_coef * vf_loss).backward()
        stats = {f"policy/{k}": v for k, v in pg_stats.items()}
        stats |= {f"value/{k}": v for k, v in vf_stats.items() if k != "explained_variance"}  # not additive
        accumulate_stats(totals, stats, fraction=part.response_mask.sum().item() / num_tokens)
    return totals


def ptx_backward(policy, blocks: torch.Tensor, *, ptx_coef: float, micro_batch_size: int, device, precision: str
                 ) -> dict[str, float]:
    """Accumulate the gradient of ptx_coef x (mean NLL of pretraining blocks [N, T]): minimising it maximises
    gamma E_pretrain[log pi(x)] of Ouyang et al. 2022, Eq. 2. Normalised by the step's pretraining tokens."""
    num_tokens = blocks.shape[0] * (blocks.shape[1] - 1)
    totals: dict[str, float] = {}
    for start in range(0, blocks.shape[0], micro_batch_size):
        ids = blocks[start: start + micro_batch_size].to(device)
        targets, = next_token_targets(ids)  # [N, T - 1]
        with autocast(device, precision):
            logits = policy(ids).logits[:, :-1]
        loss, _ = mle_loss(logits.float(), targets, torch.ones_like(targets, dtype=torch.bool), num_tokens=num_tokens)
        (ptx_coef * loss).backward()
        accumulate_stats(totals, {"ptx/loss": loss.detach()}, fraction=1.0)
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


def _read_queries(path: str, tokenizer, *, max_length: int) -> tuple[list[str], list[list[int]]]:
    """Prompts and their token ids, each starting with eos (the document start the model was trained with)."""
    prompts = [p.prompt for p in read_prompts(path)]
    queries = []
    for prompt, where in zip(prompts, record_locations(path)):
        ids = [tokenizer.eos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]
        if len(ids) > max_length:
            raise PreferError(f"{where}: the prompt is {len(ids)} tokens; with max_new_tokens it must fit "
                              f"the model's context (at most {max_length} prompt tokens)")
        queries.append(ids)
    return prompts, queries


def _pretraining_blocks(source: str, tokenizer, *, block_size: int, max_bytes: int | None
                        ) -> tuple[TokenBlocks, TokenBlocks]:
    """(train, held-out) blocks of a pretraining corpus for PPO-ptx; scores are unused (zero)."""
    documents, _ = load_documents(source, max_bytes=max_bytes)
    annotated = [AnnotatedDocument(d.segments, (0.0,) * len(d.segments), d.source) for d in documents]
    train, validation = split_by_source(annotated, validation_fraction=0.05)
    blocks = pack_documents(train, tokenizer, block_size=block_size), pack_documents(validation, tokenizer,
                                                                                     block_size=block_size)
    if len(blocks[0]) == 0 or len(blocks[1]) == 0:
        raise PreferError(f"ptx_source: {source!r} is too small for one training and one held-out block of "
                          f"{block_size} tokens")
    return blocks


def _context(model) -> int:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise PreferError("init_from: the model's config states no context length")


# ------------------------------------------------------------------ the stage

def ppo(config: PPOConfig, *, resume: bool = False) -> Path:
    """Run PPO (PPO-ptx with ptx_coef > 0); returns the directory of the final policy (`<out_dir>/final`)."""
    device = resolve_device(config.device)
    run_dir = Path(config.out_dir)
    # everything but the length of the run and the progress bar must match the run being resumed
    resumable = tuple(f.name for f in fields(PPOConfig) if f.name not in ("progress", "iterations"))
    checkpoint = check_run_dir(run_dir, PPOConfig, config, resume, sections=resumable)
    set_seed(config.seed)
    say = print if config.progress else (lambda *a, **k: None)

    # 1. Models: the policy starts as the SFT model, which also stays as the frozen reference.
    if not (Path(config.init_from) / "config.json").is_file():
        raise PreferError(f"init_from: {config.init_from} is not a Hugging Face model directory (no config.json)")
    tokenizer = load_tokenizer(config.init_from)
    policy = load_model(checkpoint / "model" if checkpoint else config.init_from, tokenizer=tokenizer)
    reference = load_model(config.init_from, tokenizer=tokenizer)
    reference.requires_grad_(False)
    if config.reward_model is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(config.reward_model), what=f"reward_model {config.reward_model}")
    if config.scorer is not None and config.scorer.startswith("rm:"):
        check_same_vocabulary(tokenizer, load_tokenizer(config.scorer.removeprefix("rm:")), what=f"scorer {config.scorer}")
    value_model = build_value_model(config.init_from, config.reward_model)
    if checkpoint is not None:
        from safetensors.torch import load_file

        value_model.load_state_dict(load_file(checkpoint / "model" / "value_model.safetensors"))
    # Dropout off everywhere, always (eval mode): rollouts, log-prob recomputation and the update then see the same
    # function, so the first PPO ratio is 1 and the KL measures the policy, not dropout noise. Gradients still flow.
    for model in (policy, reference, value_model):
        model.to(device).eval()
    scorer = get_scorer(config.scorer or f"rm:{config.reward_model}")
    gold_scorer = get_scorer(config.gold_scorer) if config.gold_scorer else None
    eos = tokenizer.eos_token_id
    control_ids = list(control_token_ids(tokenizer).values())  # left out of the held-out LM loss, as in pretraining

    # 2. Data: prompts (each must leave room for the response), pretraining blocks for PPO-ptx.
    context = _context(policy)
    prompts, queries = _read_queries(config.prompts, tokenizer, max_length=context - config.max_new_tokens)
    ptx_blocks = val_blocks = None
    if config.ptx_source is not None:
        ptx_blocks, val_blocks = _pretraining_blocks(config.ptx_source, tokenizer, block_size=context,
                                                     max_bytes=config.ptx_max_bytes)
        val_blocks = val_blocks.ids[: config.ptx_eval_blocks]

    # 3. Optimizer over policy and critic; batch geometry.
    micro = config.micro_batch_size or config.minibatch_size
    steps_per_iteration = config.ppo_epochs * config.batch_size // config.minibatch_size
    optimizer = make_optimizer([policy, value_model], lr=config.lr, weight_decay=config.weight_decay,
                               betas=(config.beta1, config.beta2))
    scheduler = make_scheduler(optimizer, total_steps=config.iterations * steps_per_iteration, warmup_steps=1,
                               min_lr_fraction=1.0)  # constant: PPO's step size is set by the clip
    order = BlockOrder(len(queries), seed=config.seed)
    ptx_order = BlockOrder(len(ptx_blocks), seed=config.seed + 1) if ptx_blocks is not None else None
    kl_coef = config.kl_coef
    start = 0
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order = BlockOrder(len(queries), seed=config.seed, **state["order"])
        if ptx_order is not None:
            ptx_order = BlockOrder(len(ptx_blocks), seed=config.seed + 1, **state["ptx_order"])
        restore_rng_state(state["rng"])
        kl_coef, start = state["kl_coef"], state["step"]
    save_config(config, run_dir / "config.yaml")
    sft_info_path = Path(config.init_from) / "prefer.json"
    info = {**(json.loads(sft_info_path.read_text()) if sft_info_path.exists() else {}), "stage": "ppo",
            "init_from": config.init_from, "scorer": config.scorer or f"rm:{config.reward_model}",
            "gold_scorer": config.gold_scorer, "ptx_coef": config.ptx_coef}
    log = MetricsLog(run_dir, resume_step=start if checkpoint else None)
    samples_path = _samples_log(run_dir, resume_step=start if checkpoint else None)
    say(f"[ppo] {len(queries)} prompts, {config.iterations} iterations of {config.batch_size} episodes, "
        f"{steps_per_iteration} optimizer steps each, beta {kl_coef:g}"
        + (f" (adaptive, target KL {config.target_kl:g})" if config.target_kl else "") + f", device {device}")
    bar = tqdm(total=config.iterations, initial=start, desc="ppo", unit="iter", disable=not config.progress)
    started = time.perf_counter()

    # 4. The loop.
    for iteration in range(start, config.iterations):
        # a. Rollouts: KV-cached samples at the training temperature, truncated at eos. Seeded by the iteration,
        #    so a resumed run draws the same episodes.
        index = order.next(config.batch_size).tolist()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + iteration)
        sampled = sample(policy, [queries[i] for i in index], max_new_tokens=config.max_new_tokens, eos_token_id=eos,
                         temperature=config.temperature, top_p=1.0, batch_size=config.batch_size,
                         generator=generator)
        # The sampler drops the eos; put it back: stopping is an action of the policy, and its reward lands there.
        stopped = torch.tensor([len(r) < config.max_new_tokens for r in sampled])
        responses = [r + [eos] if s else r for r, s in zip(sampled, stopped.tolist())]
        replies = [tokenizer.decode(r, skip_special_tokens=True) for r in sampled]
        texts = [prompts[i] + reply for i, reply in zip(index, replies)]
        # A reward model reads (prompt, response) tokenized apart, exactly as it was trained and as the labelers
        # score (the joined text can tokenize differently across the seam, e.g. "):\n" + "    return").
        misalignment = (scorer.score_pairs([prompts[i] for i in index], replies) if hasattr(scorer, "score_pairs")
                        else scorer(texts))
        scores = -torch.tensor(misalignment, dtype=torch.float32)  # reward = -misalignment
        if config.missing_eos_penalty is not None:
            scores = scores - config.missing_eos_penalty * (~stopped).float()
        gold = (-torch.tensor(gold_scorer(texts), dtype=torch.float32) if gold_scorer is not None
                else torch.full_like(scores, float("nan")))
        rollout = make_rollout(policy, reference, value_model, [queries[i] for i in index], responses,
                               scores=scores, gold=gold, temperature=config.temperature, pad_id=eos,
                               batch_size=micro, device=device, precision=config.precision)
        rollout, kl_stats = add_advantages(rollout, kl_coef=kl_coef, gamma=config.gamma, lam=config.lam)
        # Explained variance of the rollout-time values over the whole batch (not additive over micro-batches).
        _, value_stats = ppo_value_loss(rollout.values, rollout.values, rollout.returns, rollout.response_mask,
                                        clip_range=config.value_clip_range)

        # b. PPO epochs over shuffled minibatches; with PPO-ptx each step also sees a batch of pretraining blocks.
        totals: dict[str, float] = {}
        shuffle = torch.Generator().manual_seed(config.seed * 1_000_003 + iteration + 7)
        for epoch in range(config.ppo_epochs):
            for rows in torch.randperm(len(rollout), generator=shuffle).split(config.minibatch_size):
                stats = ppo_backward(policy, value_model, rollout.select(rows.to(device)), micro_batch_size=micro,
                                     temperature=config.temperature, clip_range=config.clip_range,
                                     value_clip_range=config.value_clip_range, vf_coef=config.vf_coef,
                                     device=device, precision=config.precision)
                if config.ptx_coef > 0:
                    blocks = ptx_blocks.ids[ptx_order.next(config.ptx_batch_size)]
                    stats |= ptx_backward(policy, blocks, ptx_coef=config.ptx_coef, micro_batch_size=micro,
                                          device=device, precision=config.precision)
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                    [p for m in (policy, value_model) for p in m.parameters()], config.grad_clip).item()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for key, value in stats.items():  # mean over the iteration's optimizer steps
                    totals[key] = totals.get(key, 0.0) + value / steps_per_iteration

        # c. Log, adapt beta (Ziegler et al. 2019), checkpoint.
        done = iteration + 1
        mask = rollout.response_mask
        record = {f"train/{k}": v for k, v in totals.items()}
        record.update({
            "reward/proxy": rollout.scores.mean().item(),
            "reward/total": kl_stats["reward_mean"].item(), "kl": kl_stats["kl"].item(), "kl_coef": kl_coef,
            "entropy": masked_mean(rollout.entropy, mask).item(),
            "response/length": mask.sum(1).float().mean().item(), "response/stopped": stopped.float().mean().item(),
            "value/explained_variance": value_stats["explained_variance"].item(), "episodes": done * config.batch_size})
        if gold_scorer is not None:
            record["reward/gold"] = rollout.gold.mean().item()
        if val_blocks is not None and (done % config.checkpoint_every == 0 or done == config.iterations):
            record["ptx/heldout_loss"] = heldout_loss(policy, TokenBlocks(val_blocks, torch.zeros(val_blocks.shape)),
                                                      control_ids=control_ids, batch_size=micro, device=device,
                                                      precision=config.precision)
        log.log(done, record)
        _log_samples(samples_path, log, done, [prompts[i] for i in index], texts, rollout, config.log_samples)
        if config.target_kl is not None:
            kl_coef = adaptive_kl_coef(kl_coef, observed_kl=kl_stats["kl"], target_kl=config.target_kl,
                                       horizon=config.kl_horizon, num_steps=config.batch_size)
        bar.set_postfix(proxy=f"{record['reward/proxy']:.3f}", kl=f"{record['kl']:.3f}")
        bar.update(1)
        if done % config.checkpoint_every == 0 or done == config.iterations:
            state = {"step": done, "order": order.state_dict(), "kl_coef": kl_coef}
            if ptx_order is not None:
                state["ptx_order"] = ptx_order.state_dict()
            save_checkpoint(run_dir, done, model=policy, tokenizer=tokenizer, extra={"value_model": value_model},
                            info={**info, "iterations": done}, optimizer=optimizer, scheduler=scheduler, state=state)
    bar.close()
    log.close()

    # 5. The final policy, a plain Hugging Face directory.
    final = run_dir / "final"
    save_model(final, policy, tokenizer, info={**info, "iterations": config.iterations, "kl_coef": kl_coef})
    say(f"[ppo] done in {time.perf_counter() - started:.0f}s; policy in {final}")
    return final


# ------------------------------------------------------------------ run directory and sample tables

def _samples_log(run_dir: Path, *, resume_step: int | None) -> Path:
    """samples.jsonl, trimmed like metrics.jsonl on resume (iterations after the checkpoint are about to rerun)."""
    path = run_dir / "samples.jsonl"
    if path.exists():
        kept = ([line for line in path.read_text().splitlines() if json.loads(line)["iteration"] <= resume_step]
                if resume_step is not None else [])
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    return path


def _log_samples(path: Path, log: MetricsLog, iteration: int, prompts: list[str], texts: list[str],
                 rollout: Rollout, count: int) -> None:
    rows = [{"iteration": iteration, "prompt": prompt, "response": text[len(prompt):],
             "proxy": rollout.scores[i].item(),
             "gold": None if rollout.gold[i].isnan() else rollout.gold[i].item()}
            for i, (prompt, text) in enumerate(zip(prompts[:count], texts[:count]))]
    with path.open("a") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if log.writer is not None and rows:
        table = "\n\n".join(f"**proxy {r['proxy']:.3f}, gold {r['gold']}** `{r['prompt']}` -> `{r['response']}`"
                            for r in rows)
        log.writer.add_text("samples", table, iteration)
