"""Pretraining with human feedback: one loop, top to bottom.

    scored corpus -> data transform (filtering | conditional | none) -> tokens + per-token scores in blocks
    -> objective (mle | ul | rwr | awr) -> AdamW steps with accumulation and clipping -> checkpoints

`prefer pretrain` calls `pretrain(config)`. Run it under `torchrun --nproc_per_node N` for DDP.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefer.config import PretrainConfig, save_config
from prefer.data.annotate import score_summary
from prefer.data.packing import TokenBlocks, pack_documents
from prefer.data.pipeline import build_corpus, corpus_tokenizer
from prefer.data.transforms import (
    quantile_thresholds,
)
from prefer.errors import PreferError
from prefer.evaluation.capability import heldout_block_loss
from prefer.files import write_json_atomic
from prefer.models.build import (
    build_model,
    check_model_dir,
    control_token_ids,
    count_parameters,
    load_model,
    load_tokenizer,
    read_info,
    reset_control_embeddings,
)
from prefer.models.heads import ValueHead
from prefer.models.lora import enable_gradient_checkpointing
from prefer.objectives import (
    next_token_targets,
)
from prefer.pretraining_objectives import OBJECTIVES, tagged_validation
from prefer.run_dir import releases_run_dirs
from prefer.tasks import get_task
from prefer.training import (
    BlockOrder,
    MetricsLog,
    accumulate_stats,
    autocast,
    average_across_ranks,
    check_checkpoint_vocabulary,
    check_run_dir,
    gradient_sync,
    init_distributed,
    keep_freed_memory,
    main_process_first,
    make_optimizer_and_schedule,
    micro_batch_size,
    open_run_dir,
    optimizer_step,
    per_rank_denominator,
    restore_training,
    save_checkpoint,
    save_model,
    set_seed,
    unwrap,
    wrap_model,
)

# ------------------------------------------------------------------ one optimizer step


def train_step(
    model,
    value_head,
    compute_loss,
    ids_all: torch.Tensor,
    scores_all: torch.Tensor,
    *,
    trained: list[torch.nn.Module],
    optimizer,
    scheduler,
    micro: int,
    num_tokens: float,
    device,
    precision: str,
    grad_clip: float,
    dist,
) -> tuple[dict[str, float], float]:
    """One optimizer step on this rank's share of the batch (blocks [N, T] and their per-token scores), in
    micro-batches of `micro` blocks: forward, the objective's loss, backward, then clip, AdamW and the schedule.
    `model` and `value_head` are as wrapped for the ranks, `trained` the plain modules. Returns the step's stats
    (averaged over the ranks) and the gradient norm before clipping; bench/training_step.py times this function."""
    keep = _logits_to_keep(unwrap(model), ids_all.shape[1], device)
    wrapped = [model] + ([value_head] if value_head is not None else [])
    totals: dict[str, float] = {}
    for start in range(0, len(ids_all), micro):
        ids = ids_all[start : start + micro].to(device)
        targets, scores = next_token_targets(ids, scores_all[start : start + micro].to(device))
        mask = torch.ones_like(targets, dtype=torch.bool)
        sync = start + micro >= len(ids_all)  # reduce gradients over the ranks only on the last micro-batch
        with gradient_sync(wrapped, sync=sync):
            with autocast(device, precision):
                if keep is None:
                    output = model(ids, output_hidden_states=value_head is not None)
                    logits = output.logits[:, :-1]
                else:  # the last position predicts nothing: its logits are never computed (nor their gradient)
                    output = model(ids, output_hidden_states=value_head is not None, logits_to_keep=keep)
                    logits = output.logits
            values = value_head(output.hidden_states[-1])[:, :-1] if value_head is not None else None
            loss, stats = compute_loss(logits.float(), targets, mask, scores, values, num_tokens=num_tokens)
            loss.backward()
        accumulate_stats(totals, stats, fraction=len(ids) / len(ids_all))
    totals = average_across_ranks(totals, dist)
    grad_norm = optimizer_step(trained, optimizer, scheduler, grad_clip=grad_clip)
    return totals, grad_norm


@functools.cache
def _positions(length: int, device) -> torch.Tensor:
    return torch.arange(length - 1, device=device)


def _logits_to_keep(model, length: int, device) -> torch.Tensor | None:
    """Positions 0..T-2 as the model's `logits_to_keep` (Hugging Face causal LMs that take it: the logits of the
    last position, which predicts nothing, are then never computed nor sliced off), else None."""
    forward = inspect.signature(type(model).forward).parameters
    return _positions(length, torch.device(device)) if "logits_to_keep" in forward else None


# ------------------------------------------------------------------ the stage


def initial_steps(config: PretrainConfig, *, tokens_per_step: int, total_steps: int) -> int:
    """Steps of the budget already spent by the model we start from: its recorded tokens when it is a prefer
    checkpoint and train.count_init_tokens is on (finetuning with feedback from an MLE snapshot), else 0."""
    if config.model.init_from is None or not config.train.count_init_tokens:
        return 0
    tokens = read_info(config.model.init_from).get("tokens")
    if not tokens:
        return 0
    steps = round(tokens / tokens_per_step)
    if steps >= total_steps:
        raise PreferError(
            f"train.tokens: {config.model.init_from} was already trained on {tokens} tokens, the whole "
            f"budget of {config.train.tokens}; raise train.tokens or set train.count_init_tokens=false"
        )
    return steps


@releases_run_dirs
def pretrain(config: PretrainConfig, *, resume: bool = False) -> Path:
    """Train one model; returns the directory of the final Hugging Face checkpoint (`<out_dir>/final`)."""
    dist, device = init_distributed(config.runtime.device)
    task = get_task(config.data.task)
    objective = config.objective.resolved(task.name)
    lr = config.optimizer.lr if config.optimizer.lr is not None else task.lr
    run_dir = Path(config.out_dir)
    say = print if dist.is_main else (lambda *a, **k: None)
    # The directory and the models named are checked before any data is built (the config is compared later,
    # once its thresholds and lr are resolved).
    open_run_dir(run_dir, resume)
    if config.model.init_from is not None:
        check_model_dir(config.model.init_from, field="model.init_from")
    if config.model.tokenizer is not None and not Path(config.model.tokenizer).exists():
        raise PreferError(f"model.tokenizer: {config.model.tokenizer} does not exist")

    # 1. Data: scored corpus -> thresholds -> objective's transform -> tokenizer -> blocks with per-token scores.
    # Rank 0 scores the corpus and trains the tokenizer into the cache first; the other ranks then read them, so
    # the work is done once and every rank holds the same tokenizer.
    with main_process_first(dist):
        corpus = build_corpus(
            task,
            source=config.data.source,
            max_bytes=config.data.max_bytes,
            validation_fraction=config.data.validation_fraction,
            cache_dir=config.data.cache_dir,
            workers=config.data.workers,
            threshold=objective.threshold,
            progress=config.runtime.progress and dist.is_main,
        )
        from_quantiles = quantile_thresholds(
            corpus.train, threshold_quantile=objective.threshold_quantile, filter_quantile=objective.filter_quantile
        )
        if from_quantiles:
            objective = replace(objective, **from_quantiles)
            summary = score_summary(corpus.train + corpus.validation, threshold=objective.threshold)
            corpus = replace(corpus, summary=summary)
            say(f"[pretrain] thresholds from corpus quantiles: {from_quantiles}")
        config = replace(config, objective=objective, optimizer=replace(config.optimizer, lr=lr))
        checkpoint = check_run_dir(run_dir, PretrainConfig, config, resume)
        set_seed(config.runtime.seed)
        if config.model.tokenizer is not None:
            tokenizer = load_tokenizer(config.model.tokenizer)
        elif config.model.init_from is not None:
            tokenizer = load_tokenizer(config.model.init_from, field="model.init_from")
        else:
            tokenizer = corpus_tokenizer(corpus, vocab_size=config.model.vocab_size, cache_dir=config.data.cache_dir)
        if checkpoint is not None:  # its own tokenizer (control tokens added), which must be this run's
            run_tokenizer, tokenizer = tokenizer, load_tokenizer(checkpoint / "model", field="checkpoint")
            check_checkpoint_vocabulary(checkpoint, tokenizer, run_tokenizer)
    spec = OBJECTIVES[objective.name]
    train_documents = spec.transform(corpus.train, objective, config.runtime.seed)
    if not train_documents:
        raise PreferError(f"objective.filter_threshold: {objective.filter_threshold} drops every training document")

    # 2. Model (+ a value head for AWR).
    if checkpoint is not None:
        model = load_model(checkpoint / "model")
    elif config.model.init_from is not None:
        model = load_model(config.model.init_from, tokenizer=tokenizer)
        if spec.control_tokens and not read_info(config.model.init_from).get("control_tokens_trained"):
            reset_control_embeddings(model, tokenizer)
    else:
        model = build_model(
            config.model.size,
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            context=config.model.context,
            dropout=config.model.dropout,
        )
    block_size = config.model.context or model.config.n_positions
    train_blocks = pack_documents(train_documents, tokenizer, block_size=block_size)
    # Held-out loss is measured on the same plain validation text for every objective, so models compare.
    val_blocks = pack_documents(corpus.validation, tokenizer, block_size=block_size)
    tagged = tagged_validation(corpus.validation, objective)
    val_tagged_blocks = pack_documents(tagged, tokenizer, block_size=block_size) if tagged is not None else None
    model.to(device).train()
    if config.runtime.keep_freed_memory and device.type == "cpu":
        keep_freed_memory()
    if config.runtime.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    value_head = ValueHead(model.config.hidden_size).to(device) if spec.value_head else None
    extra = {"value_head": value_head} if value_head is not None else {}  # saved beside every model
    if value_head is not None and checkpoint is not None:
        from safetensors.torch import load_file

        value_head.load_state_dict(load_file(checkpoint / "model" / "value_head.safetensors"))
    trained = [model] + ([value_head] if value_head is not None else [])
    model = wrap_model(model, dist, device, parallel=config.runtime.parallel)
    if value_head is not None:  # trained on every rank's share too: its gradients are reduced like the model's
        value_head = wrap_model(value_head, dist, device, parallel=config.runtime.parallel)

    # 3. Batch geometry, optimizer, schedule.
    batch_size = config.train.batch_size
    micro = micro_batch_size(batch_size, config.train.micro_batch_size, dist.world_size)
    tokens_per_step = batch_size * block_size
    total_steps = max(1, math.ceil(config.train.tokens / tokens_per_step))
    init_steps = initial_steps(config, tokens_per_step=tokens_per_step, total_steps=total_steps)
    optimizer, scheduler = make_optimizer_and_schedule(
        trained, config.optimizer, config.schedule, total_steps=total_steps, start_step=init_steps
    )  # lr resolved above
    order = BlockOrder(len(train_blocks), seed=config.runtime.seed)
    compute_loss = spec.make_loss(objective)
    control_ids = control_token_ids(tokenizer)
    info = {
        "task": task.name,
        "objective": objective.name,
        "control_tokens_trained": spec.control_tokens,
        "threshold": objective.threshold,
        "scorer": task.scorer,
        "init_from": config.model.init_from,
    }
    data_fingerprint = f"{corpus.fingerprint()}-{len(train_blocks)}x{block_size}"

    start_step = init_steps
    if checkpoint is not None:
        order, start_step = restore_training(
            checkpoint,
            optimizer,
            scheduler,
            num_items=len(train_blocks),
            seed=config.runtime.seed,
            data_fingerprint=data_fingerprint,
            data_name=f"corpus {config.data.source or task.corpus}",
            modules=trained,
        )
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
        write_json_atomic(
            run_dir / "data.json",
            {
                "provenance": corpus.provenance,
                "score_summary": corpus.summary,
                "train_documents": len(train_documents),
                "train_blocks": len(train_blocks),
                "validation_blocks": len(val_blocks),
                "block_size": block_size,
                "epochs": (total_steps - init_steps) * batch_size / len(train_blocks),
                "init_from": config.model.init_from,
                "init_tokens": init_steps * tokens_per_step,
            },
        )
    say(
        f"[pretrain] {objective.name}: {count_parameters(unwrap(model)) / 1e6:.2f}M parameters, "
        f"{len(train_blocks)} blocks x {block_size} tokens, {total_steps} steps of {tokens_per_step} tokens "
        f"({(total_steps - init_steps) * batch_size / len(train_blocks):.2f} epochs), lr {lr:g}, device {device}"
        + (f"; continuing {config.model.init_from} from step {init_steps}" if init_steps else "")
    )

    log = MetricsLog(run_dir, enabled=dist.is_main, resume_step=start_step if checkpoint else None)
    snapshot_steps = {max(1, round(f * total_steps)): f for f in config.train.snapshots}
    eval_batch = max(1, micro)
    val_subset = TokenBlocks(val_blocks.ids[: config.train.eval_blocks], val_blocks.scores[: config.train.eval_blocks])
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=f"pretrain {objective.name}",
        unit="step",
        disable=not (config.runtime.progress and dist.is_main),
    )
    started = time.perf_counter()

    # 4. The loop.
    for step in range(start_step, total_steps):
        indices = order.next(batch_size)  # the global batch; this rank takes its contiguous share
        share = indices.view(dist.world_size, -1)[dist.rank]
        ids_all, scores_all = train_blocks.ids[share], train_blocks.scores[share]
        num_tokens = per_rank_denominator(batch_size * (block_size - 1), dist.world_size)
        totals, grad_norm = train_step(
            model,
            value_head,
            compute_loss,
            ids_all,
            scores_all,
            trained=trained,
            optimizer=optimizer,
            scheduler=scheduler,
            micro=micro,
            num_tokens=num_tokens,
            device=device,
            precision=config.runtime.precision,
            grad_clip=config.optimizer.grad_clip,
            dist=dist,
        )

        done = step + 1
        tokens_seen = done * tokens_per_step
        record = {"train/" + k: v for k, v in totals.items() if k != "num_tokens"}
        record.update(
            {
                "train/grad_norm": grad_norm,
                "train/lr": scheduler.get_last_lr()[0],
                "tokens": tokens_seen,
                "epoch": order.epoch + order.cursor / len(train_blocks),
            }
        )
        if done % config.train.eval_every == 0 or done == total_steps:
            record["val/loss"] = heldout_block_loss(
                unwrap(model),
                val_subset,
                control_ids=control_ids,
                batch_size=eval_batch,
                device=device,
                precision=config.runtime.precision,
            )
            bar.set_postfix(loss=f"{totals.get('loss', 0):.3f}", val=f"{record['val/loss']:.3f}")
        log.log(done, record)
        bar.update(1)
        if done in snapshot_steps:  # save_model and save_checkpoint: every rank calls, rank 0 writes
            save_model(
                run_dir / "snapshots" / f"tokens_{tokens_seen:012d}",
                model,
                tokenizer,
                extra,
                {**info, "tokens": tokens_seen},
            )
        if done % config.train.checkpoint_every == 0 or done == total_steps:
            save_checkpoint(
                run_dir,
                done,
                model=model,
                tokenizer=tokenizer,
                extra=extra,
                info={**info, "tokens": tokens_seen},
                optimizer=optimizer,
                scheduler=scheduler,
                state={"step": done, "order": order.state_dict(), "data_fingerprint": data_fingerprint},
            )
    bar.close()
    log.close()

    # 5. The final model, in the Hugging Face format.
    final = run_dir / "final"
    # Every rank evaluates and calls save_model (FSDP2 forward passes and gathering are collectives); rank 0 writes.
    evaluate = functools.partial(
        heldout_block_loss,
        unwrap(model),
        control_ids=control_ids,
        batch_size=eval_batch,
        device=device,
        precision=config.runtime.precision,
    )
    losses = {"val_loss": evaluate(val_blocks)}
    if val_tagged_blocks is not None:
        losses["val_loss_with_true_tags"] = evaluate(val_tagged_blocks)
    save_model(final, model, tokenizer, extra, {**info, "tokens": total_steps * tokens_per_step, **losses})
    say(
        f"[pretrain] done: held-out loss {losses['val_loss']:.4f} on {len(val_blocks)} blocks"
        + (f" ({losses['val_loss_with_true_tags']:.4f} with true tags)" if val_tagged_blocks is not None else "")
        + f", {time.perf_counter() - started:.0f}s; model in {final}"
    )
    return final
