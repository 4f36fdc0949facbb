"""Direct preference optimisation on K-way rankings (DPO, IPO, listwise DPO) or binary feedback (KTO): one loop.

    rankings JSONL -> every response of a prompt tokenized once (eos + prompt + response + eos)
    -> the frozen reference's log-probability of every response, computed ONCE before training (kept in each
       checkpoint, so a resumed run reads the same numbers)
    -> one batch element per prompt: policy log-probs [B, K] -> DPO_LOSSES[dpo.loss] over its ranking
    -> held-out implicit-reward accuracy and margins, KL to the reference on samples -> HF directory

dpo.loss=kto reads unpaired {"prompt", "completion", "label"} examples (data.feedback) instead: one batch element per
example, and before each step's micro-batches the reference point z0 from the step's completions paired with other
prompts (prefer.training.preference_batches.kto_step_kl). OBJECTIVES[dpo.loss] says which.

`prefer dpo` calls `dpo(config)`. Run it under `torchrun --nproc_per_node N` for DDP (or FSDP2 with
runtime.parallel=fsdp; docs/distributed.md).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from prefer.config import DPOConfig
from prefer.data.formats import read_located
from prefer.data.splits import split_validation
from prefer.encoding import encode_query
from prefer.evaluation.binary_feedback import heldout_feedback
from prefer.evaluation.direct_preference import heldout_preferences, kl_on_samples
from prefer.files import file_fingerprint, write_json_atomic
from prefer.models.build import (
    check_model_dir,
    check_same_vocabulary,
    context_length,
    count_parameters,
    inherited_info,
    load_model,
    load_tokenizer,
    set_dropout,
)
from prefer.models.lora import FrozenView, model_source, prepare
from prefer.run_dir import releases_run_dirs
from prefer.training import (
    load_trainer_state,
    optimizer_step,
    per_rank_denominator,
    unsharded,
    unwrap,
    wrap_model,
)
from prefer.training.preference_batches import OBJECTIVES, encode_rankings, reference_logprobs
from prefer.training.run import EpochPlan, StageRun, accumulate_gradients, epoch_record

__all__ = ["dpo", "encode_rankings", "reference_logprobs"]


# ------------------------------------------------------------------ the stage


@releases_run_dirs
def dpo(config: DPOConfig, *, resume: bool = False) -> Path:
    """Train the policy on rankings (or binary feedback) with the chosen loss; returns `<out_dir>/final` (an HF
    causal LM)."""
    run = StageRun(config, DPOConfig, resume=resume, name="dpo", quiet_without_progress=False)
    dist, device, checkpoint = run.dist, run.device, run.checkpoint
    objective = OBJECTIVES[config.dpo.loss](config.dpo.loss, vars(config.dpo))
    data_path = getattr(config.data, objective.data_field)
    # The rankings (or feedback) are read (and a bad line reported) before any model is loaded.
    comparisons, locations = read_located(objective.read, data_path)

    # 1. Models: the policy (from the SFT model, or the checkpoint being resumed) and the frozen reference.
    reference_path = config.model.reference or config.model.init_from
    check_model_dir(config.model.init_from, field="model.init_from", causal_lm=True)
    check_model_dir(reference_path, field="model.reference", causal_lm=True)
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
    info = {
        **inherited_info(config.model.init_from),
        "stage": "dpo",
        "init_from": config.model.init_from,
        "reference": reference_path,
        objective.data_field: data_path,
        "loss": config.dpo.loss,
        "beta": config.dpo.beta,
        "tau": config.dpo.tau,
        **objective.info,
    }
    eos = tokenizer.eos_token_id

    # 2. Data: rankings split by prompt, every response tokenized once; prompts for the KL samples.
    train_index, val_index = split_validation(len(comparisons), config.data.validation_fraction, config.runtime.seed)

    def encoded(index: list[int]):
        return objective.encode(
            [comparisons[i] for i in index], [locations[i] for i in index], tokenizer, context=context
        )

    train = encoded(train_index)
    validation = encoded(val_index) if val_index else None
    kl_queries = _kl_queries([comparisons[i] for i in (val_index or train_index)], tokenizer, config, context=context)

    # 3. Batch geometry (in prompts), optimizer, schedule, the data order, the reference's log-probabilities.
    plan = EpochPlan.of(config.train, len(train), dist)
    policy.to(device).train()
    model = wrap_model(policy, dist, device, parallel=config.runtime.parallel)
    data_fingerprint = f"{file_fingerprint(data_path)}-{len(train)}"
    optimizer, scheduler, order, start_step = plan.start(
        run, [model], optimizer=config.optimizer, schedule=config.schedule, data_fingerprint=data_fingerprint,
        data_name=str(data_path),
    )  # fmt: skip
    cache = _reference_table(run, reference, train, validation, micro=plan.micro, pad_id=eos)
    train_reference, val_reference = cache["train"], cache.get("validation")
    run.begin(start=start_step, total=plan.total_steps)
    unit = objective.unit
    run.say(
        f"[dpo] {config.dpo.loss} (beta {config.dpo.beta:g}, tau {config.dpo.tau:g}), "
        f"{count_parameters(policy) / 1e6:.2f}M parameters, {len(train)} {unit} (+{len(val_index)} held out), "
        f"{plan.total_steps} steps of {plan.batch_size} {unit}, lr {config.optimizer.lr:g}, device {device}"
    )
    for warning in objective.warnings(train):
        run.say(f"[dpo] warning: {warning}")
    evaluate = partial(
        _evaluate, model, reference, validation, val_reference, kl_queries, config=config, micro=plan.micro,
        eos=eos, device=device, objective=objective,
    )  # fmt: skip
    last_eval = None

    # 4. The loop.
    for step in range(start_step, plan.total_steps):
        batch, share = plan.next(order)  # the global batch of prompts; this rank takes its contiguous share
        # What the whole step shares, before its micro-batches (KTO's z0; nothing for the ranking losses).
        state = objective.step_state(
            model, reference, train, batch.tolist(), dist=dist, batch_size=plan.micro, pad_id=eos, device=device,
            precision=config.runtime.precision,
        )  # fmt: skip
        # Every prompt has a non-tied pair (read_rankings rejects all-tie lines), so each counts once in the step's
        # mean (an example does for KTO); DDP averages ranks, hence the division (see objectives.common).
        loss_of = partial(
            _step_loss, objective, model, train, train_reference, eos=eos, device=device,
            precision=config.runtime.precision, denominator=per_rank_denominator(plan.batch_size, dist.world_size),
            state=state,
        )  # fmt: skip
        totals = accumulate_gradients([model], share.tolist(), plan.micro, loss_of, dist=dist, keys=objective.keys)
        grad_norm = optimizer_step([model], optimizer, scheduler, grad_clip=config.optimizer.grad_clip)

        done = step + 1
        record = epoch_record(totals, grad_norm=grad_norm, scheduler=scheduler, order=order)
        if run.due(done, every=config.train.eval_every):
            last_eval = evaluate(done)
            record |= last_eval
            shown = {k.split("/")[1]: f"{v:.3f}" for k, v in record.items() if k in ("val/accuracy", "val/kl")}
            run.bar.set_postfix(loss=f"{totals['loss']:.3f}", **shown)
        run.log.log(done, record)
        run.bar.update(1)
        if run.due(done, every=config.train.checkpoint_every):  # every rank calls, rank 0 writes
            state = {"step": done, "order": order.state_dict(), "data_fingerprint": data_fingerprint}
            run.save_checkpoint(
                done, model=model, tokenizer=tokenizer, extra={}, info={**info, "step": done},
                optimizer=optimizer, scheduler=scheduler, state={**state, "reference_logps": cache},
            )  # fmt: skip
    run.close()

    # 5. The final policy, a plain Hugging Face directory (every rank calls save_model, rank 0 writes).
    heldout = last_eval if last_eval is not None else evaluate(plan.total_steps)
    results = {k.replace("/", "_"): v for k, v in heldout.items()} | {"steps": plan.total_steps}
    final = run.finish(model, tokenizer, info={**info, **results})
    if dist.is_main:
        write_json_atomic(run.run_dir / "results.json", results)
    run.say(
        f"[dpo] done: held-out accuracy {results.get('val_accuracy', 'n/a')}, KL {results.get('val_kl', 'n/a')}, "
        f"{run.elapsed():.0f}s; policy in {final}"
    )
    return final


def _kl_queries(comparisons, tokenizer, config: DPOConfig, *, context: int) -> list[list[int]]:
    """`eval.kl_samples` prompts (cycled) of the held-out rankings (the training ones without a held-out split)
    that leave room for `eval.max_new_tokens`: the KL to the reference is estimated on samples from them."""
    queries = [
        q
        for q in (encode_query(tokenizer, c.prompt, c.prompt_messages) for c in comparisons)
        if len(q) + config.eval.max_new_tokens <= context
    ]
    return [queries[i % len(queries)] for i in range(config.eval.kl_samples)] if queries else []


def _step_loss(objective, model, train, train_reference, rows, *, eos, device, precision, denominator, state):
    batch = train.batch(rows, pad_id=eos)
    return objective.batch_loss(
        model, train, batch, train_reference, denominator=denominator, device=device, precision=precision, **state
    )


def _heldout_rankings(model, reference_model, rankings, reference, *, objective, **forward) -> dict[str, float]:
    heldout = heldout_preferences(model, rankings, reference, **forward, **objective.loss_args)
    return {key: heldout[key] for key in ("accuracy", "margin", "loss")}


_HELDOUT = {"rankings": _heldout_rankings, "feedback": heldout_feedback}  # by the objective's data_field


def _evaluate(model, reference, validation, val_reference, kl_queries, step, *, config, micro, eos, device, objective):
    """Held-out implicit-reward accuracy, margin and loss, and the KL to the reference on samples of the policy.
    Every rank evaluates (FSDP2 forward passes are collectives); the samples are the same on every rank."""
    record = {}
    if validation is not None:
        heldout = _HELDOUT[objective.data_field](
            model,
            reference,
            validation,
            val_reference,
            objective=objective,
            batch_size=micro,
            pad_id=eos,
            device=device,
            precision=config.runtime.precision,
        )
        record |= {f"val/{key}": value for key, value in heldout.items()}
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


def _reference_table(run: StageRun, reference, train, validation, *, micro: int, pad_id: int) -> dict:
    """{"train": [C, K], "validation": ...} log-probabilities of every response under the frozen reference,
    computed once before training, or read from the checkpoint being resumed (which keeps them)."""
    if run.checkpoint is not None:
        return load_trainer_state(run.checkpoint)["reference_logps"]
    reference_for = partial(
        reference_logprobs,
        reference,
        batch_size=micro,
        pad_id=pad_id,
        device=run.device,
        precision=run.config.runtime.precision,
    )
    held_out = {} if validation is None else {"validation": reference_for(validation)}
    return {"train": reference_for(train), **held_out}
