"""Pretraining with human feedback: one loop, top to bottom.

    scored corpus -> data transform (filtering | conditional | none) -> tokens + per-token scores in blocks
    -> objective (mle | ul | rwr | awr) -> AdamW steps with accumulation and clipping -> checkpoints

`prefer pretrain` calls `pretrain(config)`. Run it under `torchrun --nproc_per_node N` for DDP.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from pathlib import Path

from prefer.config import PretrainConfig
from prefer.controls import control_token_ids
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
    context_length,
    count_parameters,
    load_model,
    load_tokenizer,
    read_info,
    reset_control_embeddings,
)
from prefer.models.heads import ValueHead
from prefer.models.lora import enable_gradient_checkpointing
from prefer.pretraining_objectives import OBJECTIVES, tagged_validation
from prefer.run_dir import releases_run_dirs
from prefer.training import (
    check_checkpoint_vocabulary,
    keep_freed_memory,
    main_process_first,
    per_rank_denominator,
    save_model,
    unwrap,
    wrap_model,
)
from prefer.training.block_step import train_step
from prefer.training.run import EpochPlan, StageRun, epoch_record

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
    # The directory and the models named are checked before any data is built (the config is compared later,
    # once its thresholds and lr are resolved).
    run = StageRun(
        config, PretrainConfig, resume=resume, name="pretrain", quiet_without_progress=False, defer_check=True
    )
    dist, device = run.dist, run.device
    if config.model.init_from is not None:
        check_model_dir(config.model.init_from, field="model.init_from", causal_lm=True)
    if config.model.tokenizer is not None and not Path(config.model.tokenizer).exists():
        raise PreferError(f"model.tokenizer: {config.model.tokenizer} does not exist")

    # 1. Data: scored corpus -> thresholds -> objective's transform -> tokenizer -> blocks with per-token scores.
    config, corpus, tokenizer = _corpus_and_tokenizer(config, run)
    task, objective, checkpoint = config.data.resolved_task(), config.objective, run.checkpoint
    spec = OBJECTIVES[objective.name]
    train_documents = spec.transform(corpus.train, objective, config.runtime.seed)
    if not train_documents:
        raise PreferError(f"objective.filter_threshold: {objective.filter_threshold} drops every training document")

    # 2. Model (+ a value head for AWR), blocks of its context.
    model = _model(config, spec, tokenizer, checkpoint)
    block_size = min(config.model.context or context_length(model), context_length(model))
    train_blocks = pack_documents(train_documents, tokenizer, block_size=block_size)
    # Held-out loss is measured on the same plain validation text for every objective, so models compare.
    val_blocks = pack_documents(corpus.validation, tokenizer, block_size=block_size)
    tagged = tagged_validation(corpus.validation, objective)
    val_tagged_blocks = pack_documents(tagged, tokenizer, block_size=block_size) if tagged is not None else None
    model, value_head, trained = _ready(model, config, spec, run)
    extra = {"value_head": value_head} if value_head is not None else {}  # saved beside every model

    # 3. Batch geometry (a budget of tokens), optimizer, schedule, the data order (restored on resume).
    batch_size = config.train.batch_size
    tokens_per_step = batch_size * block_size
    total_steps = max(1, math.ceil(config.train.tokens / tokens_per_step))
    plan = EpochPlan(
        num_items=len(train_blocks),
        total_steps=total_steps,
        batch_size=batch_size,
        micro_batch=config.train.micro_batch_size,
        dist=dist,
    )
    init_steps = initial_steps(config, tokens_per_step=tokens_per_step, total_steps=total_steps)
    compute_loss = spec.make_loss(objective)
    control_ids = control_token_ids(tokenizer)
    info = {"task": task.name, "objective": objective.name, "control_tokens_trained": spec.control_tokens}
    info |= {"threshold": objective.threshold, "scorer": task.scorer, "init_from": config.model.init_from}
    data_fingerprint = f"{corpus.fingerprint()}-{len(train_blocks)}x{block_size}"
    optimizer, scheduler, order, start_step = plan.start(
        run, trained, optimizer=config.optimizer, schedule=config.schedule, data_fingerprint=data_fingerprint,
        data_name=f"corpus {config.data.source or task.corpus}", start_step=init_steps,
    )  # fmt: skip
    start_step = start_step if checkpoint is not None else init_steps
    epochs = (total_steps - init_steps) * batch_size / len(train_blocks)
    if dist.is_main:
        _write_data_record(run.run_dir / "data.json", config, corpus, train_documents, train_blocks, val_blocks,
                           epochs=epochs, init_tokens=init_steps * tokens_per_step)  # fmt: skip
    run.name = f"pretrain {objective.name}"
    run.begin(start=start_step, total=total_steps)
    run.say(
        f"[pretrain] {objective.name}: {count_parameters(unwrap(model)) / 1e6:.2f}M parameters, "
        f"{len(train_blocks)} blocks x {block_size} tokens, {total_steps} steps of {tokens_per_step} tokens "
        f"({epochs:.2f} epochs), lr {config.optimizer.lr:g}, device {device}"
        + (f"; continuing {config.model.init_from} from step {init_steps}" if init_steps else "")
    )
    snapshot_steps = {max(1, round(f * total_steps)): f for f in config.train.snapshots}
    evaluate = functools.partial(  # evaluate(blocks): held-out loss per content token
        heldout_block_loss, unwrap(model), control_ids=control_ids, batch_size=max(1, plan.micro), device=device,
        precision=config.runtime.precision,
    )  # fmt: skip
    val_subset = TokenBlocks(val_blocks.ids[: config.train.eval_blocks], val_blocks.scores[: config.train.eval_blocks])
    step_on = functools.partial(  # step_on(ids, scores): one optimizer step on this rank's blocks
        train_step, model, value_head, compute_loss, trained=trained, optimizer=optimizer, scheduler=scheduler,
        micro=plan.micro, num_tokens=per_rank_denominator(batch_size * (block_size - 1), dist.world_size),
        device=device, precision=config.runtime.precision, grad_clip=config.optimizer.grad_clip, dist=dist,
    )  # fmt: skip

    # 4. The loop.
    for step in range(start_step, total_steps):
        _, share = plan.next(order)  # the global batch; this rank takes its contiguous share
        totals, grad_norm = step_on(train_blocks.ids[share], train_blocks.scores[share])

        done = step + 1
        tokens_seen = done * tokens_per_step
        totals.pop("num_tokens", None)
        record = epoch_record(totals, grad_norm=grad_norm, scheduler=scheduler, order=order) | {"tokens": tokens_seen}
        if run.due(done, every=config.train.eval_every):
            record["val/loss"] = evaluate(val_subset)
            run.bar.set_postfix(loss=f"{totals.get('loss', 0):.3f}", val=f"{record['val/loss']:.3f}")
        run.log.log(done, record)
        run.bar.update(1)
        if done in snapshot_steps:  # save_model and save_checkpoint: every rank calls, rank 0 writes
            snapshot = run.run_dir / "snapshots" / f"tokens_{tokens_seen:012d}"
            save_model(snapshot, model, tokenizer, extra, {**info, "tokens": tokens_seen})
        if run.due(done, every=config.train.checkpoint_every):
            state = {"step": done, "order": order.state_dict(), "data_fingerprint": data_fingerprint}
            run.save_checkpoint(
                done, model=model, tokenizer=tokenizer, extra=extra, info={**info, "tokens": tokens_seen},
                optimizer=optimizer, scheduler=scheduler, state=state,
            )  # fmt: skip
    run.close()

    # 5. The final model, in the Hugging Face format. Every rank evaluates and calls save_model (FSDP2 forward
    #    passes and gathering are collectives); rank 0 writes.
    losses = {"val_loss": evaluate(val_blocks)}
    if val_tagged_blocks is not None:
        losses["val_loss_with_true_tags"] = evaluate(val_tagged_blocks)
    final = run.finish(model, tokenizer, extra=extra, info={**info, "tokens": total_steps * tokens_per_step, **losses})
    run.say(
        f"[pretrain] done: held-out loss {losses['val_loss']:.4f} on {len(val_blocks)} blocks"
        + (f" ({losses['val_loss_with_true_tags']:.4f} with true tags)" if val_tagged_blocks is not None else "")
        + f", {run.elapsed():.0f}s; model in {final}"
    )
    return final


def _ready(model, config: PretrainConfig, spec, run: StageRun):
    """The model on its device in train mode (+ AWR's value head), wrapped for the ranks: (model, value head or
    None, the plain modules the optimizer trains)."""
    model.to(run.device).train()
    if config.runtime.keep_freed_memory and run.device.type == "cpu":
        keep_freed_memory()
    if config.runtime.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    value_head = _value_head(model, run.device, run.checkpoint) if spec.value_head else None
    trained = [model] + ([value_head] if value_head is not None else [])
    model = wrap_model(model, run.dist, run.device, parallel=config.runtime.parallel)
    if value_head is not None:  # trained on every rank's share too: its gradients are reduced like the model's
        value_head = wrap_model(value_head, run.dist, run.device, parallel=config.runtime.parallel)
    return model, value_head, trained


def _value_head(model, device, checkpoint: Path | None) -> ValueHead:
    """AWR's value head on the model's last hidden state (the checkpoint's, on resume)."""
    head = ValueHead(model.config.hidden_size).to(device)
    if checkpoint is not None:
        from safetensors.torch import load_file

        head.load_state_dict(load_file(checkpoint / "model" / "value_head.safetensors"))
    return head


def _write_data_record(
    path: Path, config, corpus, train_documents, train_blocks, val_blocks, *, epochs: float, init_tokens: int
) -> None:
    """data.json: where the corpus came from, its scores, and how much of it the run trains on."""
    record = {
        "provenance": corpus.provenance,
        "score_summary": corpus.summary,
        "train_documents": len(train_documents),
        "train_blocks": len(train_blocks),
        "validation_blocks": len(val_blocks),
        "block_size": train_blocks.ids.shape[1],
        "epochs": epochs,
        "init_from": config.model.init_from,
        "init_tokens": init_tokens,
    }
    write_json_atomic(path, record)


def _corpus_and_tokenizer(config: PretrainConfig, run: StageRun):
    """The scored corpus, the config with its objective's thresholds (from corpus quantiles where asked) and lr
    resolved (then compared with a resumed run's: `run.check`), and the tokenizer. Rank 0 scores the corpus and
    trains the tokenizer into the cache first; the other ranks then read them, so the work is done once and every
    rank holds the same tokenizer."""
    task = config.data.resolved_task()
    objective = config.objective.resolved(task.name)
    lr = config.optimizer.lr if config.optimizer.lr is not None else task.lr
    with main_process_first(run.dist):
        corpus = build_corpus(
            task,
            source=config.data.source,
            max_bytes=config.data.max_bytes,
            validation_fraction=config.data.validation_fraction,
            cache_dir=config.data.cache_dir,
            workers=config.data.workers,
            threshold=objective.threshold,
            progress=config.runtime.progress and run.dist.is_main,
        )
        from_quantiles = quantile_thresholds(
            corpus.train, threshold_quantile=objective.threshold_quantile, filter_quantile=objective.filter_quantile
        )
        if from_quantiles:
            objective = replace(objective, **from_quantiles)
            summary = score_summary(corpus.train + corpus.validation, threshold=objective.threshold)
            corpus = replace(corpus, summary=summary)
            run.say(f"[pretrain] thresholds from corpus quantiles: {from_quantiles}")
        config = replace(config, objective=objective, optimizer=replace(config.optimizer, lr=lr))
        run.check(config)
        if config.model.tokenizer is not None:  # from scratch: one vocabulary (control tokens in) for every objective
            tokenizer = load_tokenizer(config.model.tokenizer, control_tokens=True)
        elif config.model.init_from is not None:  # a user's model keeps its vocabulary unless the objective tags
            tokenizer = load_tokenizer(
                config.model.init_from,
                field="model.init_from",
                control_tokens=OBJECTIVES[objective.name].control_tokens,
            )
        else:
            tokenizer = corpus_tokenizer(corpus, vocab_size=config.model.vocab_size, cache_dir=config.data.cache_dir)
        if run.checkpoint is not None:  # its own tokenizer (control tokens added), which must be this run's
            run_tokenizer, tokenizer = tokenizer, load_tokenizer(run.checkpoint / "model", field="checkpoint")
            check_checkpoint_vocabulary(run.checkpoint, tokenizer, run_tokenizer)
    return config, corpus, tokenizer


def _model(config: PretrainConfig, spec, tokenizer, checkpoint: Path | None):
    """The checkpoint's model, `model.init_from` (its control-token rows reset when the objective needs tags it
    never learned), or a fresh `model.size` model."""
    if checkpoint is not None:
        return load_model(checkpoint / "model")
    if config.model.init_from is not None:
        model = load_model(config.model.init_from, tokenizer=tokenizer)
        if spec.control_tokens and not read_info(config.model.init_from).get("control_tokens_trained"):
            reset_control_embeddings(model, tokenizer)
        return model
    return build_model(
        config.model.size,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        context=config.model.context,
        dropout=config.model.dropout,
    )
