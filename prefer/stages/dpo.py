"""Direct preference optimisation on K-way rankings (DPO, IPO, listwise DPO): one loop, top to bottom.

    rankings JSONL -> every response of a prompt tokenized once (eos + prompt + response + eos)
    -> the frozen reference's log-probability of every response, computed ONCE before training (kept in each
       checkpoint, so a resumed run reads the same numbers)
    -> one batch element per prompt: policy log-probs [B, K] -> DPO_LOSSES[dpo.loss] over its ranking
    -> held-out implicit-reward accuracy and margins, KL to the reference on samples -> HF directory

`prefer dpo` calls `dpo(config)`. Run it under `torchrun --nproc_per_node N` for DDP (or FSDP2 with
runtime.parallel=fsdp; docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from prefer.config import DPOConfig, save_config
from prefer.data.encoding import encode_query
from prefer.data.formats import read_rankings, record_locations, split_validation
from prefer.errors import PreferError
from prefer.evaluation.direct_preference import (
    batch_loss,
    encode_rankings,
    heldout_preferences,
    kl_on_samples,
    reference_logprobs,
    sequence_logprobs,
)
from prefer.files import file_fingerprint, write_json_atomic
from prefer.models.build import (
    check_same_vocabulary,
    context_length,
    count_parameters,
    load_model,
    load_tokenizer,
    set_dropout,
)
from prefer.models.lora import FrozenView, model_source, prepare
from prefer.run_dir import releases_run_dirs
from prefer.training import (
    BlockOrder,
    MetricsLog,
    accumulate_stats,
    average_across_ranks,
    check_run_dir,
    gradient_sync,
    init_distributed,
    load_trainer_state,
    make_optimizer_and_schedule,
    micro_batch_size,
    optimizer_step,
    per_rank_denominator,
    restore_training,
    save_checkpoint,
    save_model,
    set_seed,
    unsharded,
    unwrap,
    wrap_model,
)

__all__ = ["dpo", "encode_rankings", "sequence_logprobs", "reference_logprobs"]


# ------------------------------------------------------------------ the stage


@releases_run_dirs
def dpo(config: DPOConfig, *, resume: bool = False) -> Path:
    """Train the policy on rankings with the chosen preference loss; returns `<out_dir>/final` (an HF causal LM)."""
    dist, device = init_distributed(config.runtime.device)
    run_dir = Path(config.out_dir)
    checkpoint = check_run_dir(run_dir, DPOConfig, config, resume)
    set_seed(config.runtime.seed)
    say = print if dist.is_main else (lambda *a, **k: None)

    # The rankings are read (and a bad line reported) before any model is loaded.
    comparisons = read_rankings(config.data.rankings)
    locations = record_locations(config.data.rankings)

    # 1. Models: the policy (from the SFT model, or the checkpoint being resumed) and the frozen reference.
    reference_path = config.model.reference or config.model.init_from
    for field, path in (("model.init_from", config.model.init_from), ("model.reference", reference_path)):
        if not (Path(path) / "config.json").is_file():
            raise PreferError(f"{field}: {path} is not a Hugging Face model directory (no config.json)")
    tokenizer = load_tokenizer(config.model.init_from)
    if config.model.reference is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(reference_path), what=f"model.reference {reference_path}")
    policy = load_model(model_source(config.model.init_from, checkpoint, config.lora), tokenizer=tokenizer)
    set_dropout(policy, config.model.dropout)
    prepare(policy, config.lora, checkpoint=checkpoint, gradient_checkpointing=config.runtime.gradient_checkpointing)
    # LoRA against the SFT model: the reference is the policy's own trunk with the adapters off (one model, not two)
    shared = config.lora.enabled and config.model.reference is None
    reference = FrozenView(policy) if shared else load_model(reference_path, tokenizer=tokenizer).to(device).eval()
    reference.requires_grad_(False)
    context = min(config.model.context or context_length(policy), context_length(policy))
    init_info_path = Path(config.model.init_from) / "prefer.json"
    init_info = json.loads(init_info_path.read_text()) if init_info_path.exists() else {}
    info = {
        **{k: v for k, v in init_info.items() if k in ("task", "scorer", "control_tokens_trained")},
        "stage": "dpo",
        "init_from": config.model.init_from,
        "reference": reference_path,
        "rankings": config.data.rankings,
        "loss": config.dpo.loss,
        "beta": config.dpo.beta,
        "tau": config.dpo.tau,
    }
    eos = tokenizer.eos_token_id

    # 2. Data: rankings split by prompt, every response tokenized once; prompts for the KL samples.
    train_index, val_index = split_validation(len(comparisons), config.data.validation_fraction, config.runtime.seed)
    train = encode_rankings(
        [comparisons[i] for i in train_index], [locations[i] for i in train_index], tokenizer, context=context
    )
    validation = (
        encode_rankings(
            [comparisons[i] for i in val_index], [locations[i] for i in val_index], tokenizer, context=context
        )
        if val_index
        else None
    )
    kl_sources = [comparisons[i] for i in (val_index or train_index)]
    kl_queries = [
        q
        for q in (encode_query(tokenizer, c.prompt, c.prompt_messages) for c in kl_sources)
        if len(q) + config.eval.max_new_tokens <= context
    ]
    kl_queries = [kl_queries[i % len(kl_queries)] for i in range(config.eval.kl_samples)] if kl_queries else []

    # 3. Batch geometry (in prompts), optimizer, schedule, the reference's log-probabilities.
    batch_size = config.train.batch_size
    micro = micro_batch_size(batch_size, config.train.micro_batch_size, dist.world_size)
    total_steps = max(1, math.ceil(config.train.epochs * len(train) / batch_size))
    policy.to(device).train()
    model = wrap_model(policy, dist, device, parallel=config.runtime.parallel)
    optimizer, scheduler = make_optimizer_and_schedule(
        [model], config.optimizer, config.schedule, total_steps=total_steps
    )
    order = BlockOrder(len(train), seed=config.runtime.seed)
    data_fingerprint = f"{file_fingerprint(config.data.rankings)}-{len(train)}"
    start_step = 0
    reference_for = partial(  # reference_for(rankings): the frozen reference's table, computed once
        reference_logprobs, reference, batch_size=micro, pad_id=eos, device=device, precision=config.runtime.precision
    )
    if checkpoint is not None:
        order, start_step = restore_training(
            checkpoint,
            optimizer,
            scheduler,
            num_items=len(train),
            seed=config.runtime.seed,
            data_fingerprint=data_fingerprint,
            data_name=str(config.data.rankings),
            modules=[model],
        )
        cached = load_trainer_state(checkpoint)["reference_logps"]
        train_reference, val_reference = cached["train"], cached.get("validation")
    else:
        train_reference = reference_for(train)
        val_reference = reference_for(validation) if validation is not None else None
    cache = {"train": train_reference, **({"validation": val_reference} if val_reference is not None else {})}
    if dist.is_main:
        save_config(config, run_dir / "config.yaml")
    say(
        f"[dpo] {config.dpo.loss} (beta {config.dpo.beta:g}, tau {config.dpo.tau:g}), "
        f"{count_parameters(policy) / 1e6:.2f}M parameters, {len(train)} prompts (+{len(val_index)} held out), "
        f"{total_steps} steps of {batch_size} prompts, lr {config.optimizer.lr:g}, device {device}"
    )

    loss_args = {"loss": config.dpo.loss, "hyperparameters": {"beta": config.dpo.beta, "tau": config.dpo.tau}}
    log = MetricsLog(run_dir, enabled=dist.is_main, resume_step=start_step if checkpoint else None)

    def evaluate(step: int) -> dict[str, float]:
        # Every rank evaluates (FSDP2 forward passes are collectives); the samples are the same on every rank.
        record = {}
        if validation is not None:
            heldout = heldout_preferences(
                model,
                validation,
                val_reference,
                batch_size=micro,
                pad_id=eos,
                device=device,
                precision=config.runtime.precision,
                **loss_args,
            )
            record |= {f"val/{key}": heldout[key] for key in ("accuracy", "margin", "loss")}
        if kl_queries:
            with unsharded(model):
                record["val/kl"] = kl_on_samples(
                    unwrap(model),
                    reference,
                    kl_queries,
                    seed=config.runtime.seed,
                    step=step,
                    max_new_tokens=config.eval.max_new_tokens,
                    eos=eos,
                    batch_size=micro,
                    device=device,
                    precision=config.runtime.precision,
                )
        return record

    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc="dpo",
        unit="step",
        disable=not (config.runtime.progress and dist.is_main),
    )
    started = time.perf_counter()
    last_eval = None

    # 4. The loop.
    for step in range(start_step, total_steps):
        indices = order.next(batch_size)  # the global batch of prompts; this rank takes its contiguous share
        share = indices.view(dist.world_size, -1)[dist.rank].tolist()
        # Every prompt has a non-tied pair (read_rankings rejects all-tie lines), so each counts once in the step's
        # mean; DDP averages ranks, hence the division (see objectives.common).
        num_prompts = per_rank_denominator(batch_size, dist.world_size)
        totals: dict[str, float] = {}
        for start in range(0, len(share), micro):
            sync = start + micro >= len(share)
            with gradient_sync([model], sync=sync):
                loss, stats = batch_loss(
                    model,
                    train.batch(share[start : start + micro], pad_id=eos),
                    train_reference,
                    device=device,
                    precision=config.runtime.precision,
                    num_prompts=num_prompts,
                    **loss_args,
                )
                loss.backward()
            accumulate_stats(
                totals,
                {k: stats[k] for k in ("loss", "accuracy", "margin_mean")},
                fraction=len(share[start : start + micro]) / len(share),
            )
        totals = average_across_ranks(totals, dist)
        grad_norm = optimizer_step([model], optimizer, scheduler, grad_clip=config.optimizer.grad_clip)

        done = step + 1
        record = {"train/" + k: v for k, v in totals.items()}
        record.update(
            {
                "train/grad_norm": grad_norm,
                "train/lr": scheduler.get_last_lr()[0],
                "epoch": order.epoch + order.cursor / len(train),
            }
        )
        if done % config.train.eval_every == 0 or done == total_steps:
            last_eval = evaluate(done)
            record |= last_eval
            bar.set_postfix(
                loss=f"{totals['loss']:.3f}",
                **{k.split("/")[1]: f"{v:.3f}" for k, v in record.items() if k in ("val/accuracy", "val/kl")},
            )
        log.log(done, record)
        bar.update(1)
        if done % config.train.checkpoint_every == 0 or done == total_steps:  # every rank calls, rank 0 writes
            save_checkpoint(
                run_dir,
                done,
                model=model,
                tokenizer=tokenizer,
                extra={},
                info={**info, "step": done},
                optimizer=optimizer,
                scheduler=scheduler,
                state={
                    "step": done,
                    "order": order.state_dict(),
                    "data_fingerprint": data_fingerprint,
                    "reference_logps": cache,
                },
            )
    bar.close()
    log.close()

    # 5. The final policy, a plain Hugging Face directory (every rank calls save_model, rank 0 writes).
    final = run_dir / "final"
    heldout = last_eval if last_eval is not None else evaluate(total_steps)
    results = {k.replace("/", "_"): v for k, v in heldout.items()} | {"steps": total_steps}
    save_model(final, model, tokenizer, None, {**info, **results})
    if dist.is_main:
        write_json_atomic(run_dir / "results.json", results)
        say(
            f"[dpo] done: held-out accuracy {results.get('val_accuracy', 'n/a')}, KL {results.get('val_kl', 'n/a')}, "
            f"{time.perf_counter() - started:.0f}s; policy in {final}"
        )
    return final
