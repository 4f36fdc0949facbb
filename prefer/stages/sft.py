"""Supervised finetuning (InstructGPT step 1): one loop, top to bottom.

    demonstrations JSONL -> eos (document start) + prompt + response + eos (loss on the response and its eos only)
    -> right-padded examples, or packed blocks -> mle_loss normalised by the step's loss tokens -> checkpoints

`prefer sft` calls `sft(config)`. Run it under `torchrun --nproc_per_node N` for DDP
(or FSDP2 with runtime.parallel=fsdp; docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from prefer.config import SFTConfig
from prefer.data.formats import Conversation, Demonstration, read_demonstrations, read_located
from prefer.data.splits import split_validation
from prefer.encoding import encode_sft_example
from prefer.files import file_fingerprint
from prefer.models.build import (
    check_model_dir,
    context_length,
    count_parameters,
    inherited_info,
    load_model,
    load_tokenizer,
    set_dropout,
)
from prefer.models.lora import model_source, prepare
from prefer.objectives import mle_loss, next_token_targets
from prefer.run_dir import releases_run_dirs
from prefer.training import (
    autocast,
    check_checkpoint_vocabulary,
    optimizer_step,
    per_rank_denominator,
    unwrap,
    wrap_model,
)
from prefer.training.run import EpochPlan, StageRun, accumulate_gradients, epoch_record


@dataclass(frozen=True)
class SFTExamples:
    """Tokenized demonstrations, right-padded with eos (or packed into full blocks).

    ids:            [N, T] int64
    loss_mask:      [N, T] bool, True on the tokens the loss predicts: each response's tokens and its eos
    attention_mask: [N, T] bool, True on real tokens (False = padding)
    """

    ids: torch.Tensor
    loss_mask: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def rows(self, index: torch.Tensor | slice) -> SFTExamples:
        """The selected rows, cut to their longest real sequence (right padding makes that a prefix)."""
        attention = self.attention_mask[index]
        width = int(attention.sum(dim=1).max())
        return SFTExamples(self.ids[index][:, :width], self.loss_mask[index][:, :width], attention[:, :width])


def tokenize_demonstrations(
    demonstrations: list[Demonstration | Conversation], locations: list[str], tokenizer, *, context: int, packing: bool
) -> SFTExamples:
    """One example per demonstration (cut to `context`), or with `packing` one stream cut into blocks of `context`
    tokens (an example may straddle two blocks; the last block is padded). A prompt that leaves no room for a
    response is a PreferError naming its file and line."""
    sequences, masks = [], []
    for demonstration, where in zip(demonstrations, locations):
        ids, mask = encode_sft_example(tokenizer, demonstration, context=context, where=where)
        sequences.append(ids)
        masks.append(mask)
    if packing:
        stream = [token for ids in sequences for token in ids]
        stream_mask = [flag for mask in masks for flag in mask]
        sequences = [stream[i : i + context] for i in range(0, len(stream), context)]
        masks = [stream_mask[i : i + context] for i in range(0, len(stream_mask), context)]
    width = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), width), tokenizer.eos_token_id, dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (sequence, mask) in enumerate(zip(sequences, masks)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        loss_mask[row, : len(mask)] = torch.tensor(mask)
        attention_mask[row, : len(sequence)] = True
    return SFTExamples(ids, loss_mask, attention_mask)


def sft_loss(model, batch: SFTExamples, *, device, precision: str, num_tokens: float):
    """mle_loss on the response tokens of a batch; `num_tokens` = loss tokens of the whole optimizer step."""
    ids, attention = batch.ids.to(device), batch.attention_mask.to(device)
    targets, mask = next_token_targets(ids, batch.loss_mask.to(device))  # mask[t] belongs to the predicted token
    with autocast(device, precision):
        logits = model(input_ids=ids, attention_mask=attention.long()).logits[:, :-1]
    return mle_loss(logits.float(), targets, mask, num_tokens=num_tokens)


@torch.no_grad()
def validation_loss(model, examples: SFTExamples, *, batch_size: int, device, precision: str) -> float:
    """Mean NLL per response token of held-out demonstrations, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = examples.rows(slice(start, start + batch_size))
        loss, stats = sft_loss(model, batch, device=device, precision=precision, num_tokens=1.0)  # a sum
        total += loss.item()
        count += int(stats["num_tokens"])
    model.train(was_training)
    return total / max(1, count)


@releases_run_dirs
def sft(config: SFTConfig, *, resume: bool = False) -> Path:
    """Finetune `model.init_from` on demonstrations; returns `<out_dir>/final` (an HF causal LM directory)."""
    run = StageRun(config, SFTConfig, resume=resume, name="sft", quiet_without_progress=False)
    dist, device, checkpoint = run.dist, run.device, run.checkpoint
    # The demonstrations are read (and a bad line reported) before any model is loaded.
    demonstrations, locations = read_located(read_demonstrations, config.data.demonstrations)

    # 1. Model and tokenizer: the initial model, or the checkpoint being resumed (with the initial model's vocabulary).
    check_model_dir(config.model.init_from, field="model.init_from", causal_lm=True)
    tokenizer = load_tokenizer(config.model.init_from, field="model.init_from")
    source = checkpoint / "model" if checkpoint is not None else Path(config.model.init_from)
    if checkpoint is not None:
        run_tokenizer, tokenizer = tokenizer, load_tokenizer(source, field="checkpoint")
        check_checkpoint_vocabulary(checkpoint, tokenizer, run_tokenizer)
    model = load_model(model_source(config.model.init_from, checkpoint, config.lora), tokenizer=tokenizer)
    set_dropout(model, config.model.dropout)
    model = prepare(
        model, config.lora, checkpoint=checkpoint, gradient_checkpointing=config.runtime.gradient_checkpointing
    )
    context = min(config.model.context or context_length(model), context_length(model))
    info = {
        **inherited_info(config.model.init_from),
        "stage": "sft",
        "init_from": config.model.init_from,
        "demonstrations": config.data.demonstrations,
    }

    # 2. Data: demonstrations -> (train, validation) examples with response-only loss masks.
    train_index, val_index = split_validation(len(demonstrations), config.data.validation_fraction, config.runtime.seed)

    def examples(index: list[int], packing: bool) -> SFTExamples:
        rows = ([demonstrations[i] for i in index], [locations[i] for i in index])
        return tokenize_demonstrations(*rows, tokenizer, context=context, packing=packing)

    train = examples(train_index, config.data.packing)
    validation = examples(val_index, False) if val_index else None
    model.to(device).train()
    model = wrap_model(model, dist, device, parallel=config.runtime.parallel)

    # 3. Batch geometry, optimizer, schedule, the data order (restored on resume).
    plan = EpochPlan.of(config.train, len(train), dist)
    data_fingerprint = f"{file_fingerprint(config.data.demonstrations)}-{len(train)}x{train.ids.shape[1]}"
    optimizer, scheduler, order, start_step = plan.start(
        run, [model], optimizer=config.optimizer, schedule=config.schedule, data_fingerprint=data_fingerprint,
        data_name=str(config.data.demonstrations),
    )  # fmt: skip
    run.begin(start=start_step, total=plan.total_steps)
    run.say(
        f"[sft] {count_parameters(unwrap(model)) / 1e6:.2f}M parameters, {len(train)} "
        f"{'packed blocks' if config.data.packing else 'examples'} (+{len(val_index)} held out), context {context}, "
        f"{plan.total_steps} steps of {plan.batch_size}, lr {config.optimizer.lr:g}, device {device}"
    )
    evaluate = partial(
        validation_loss,
        unwrap(model),
        validation,
        batch_size=plan.micro,
        device=device,
        precision=config.runtime.precision,
    )

    # 4. The loop.
    for step in range(start_step, plan.total_steps):
        indices, share = plan.next(order)  # the global batch; this rank takes its contiguous share
        # Loss tokens of the whole step (all ranks); DDP averages ranks, hence the division (objectives.common).
        step_tokens = float(next_token_targets(train.loss_mask[indices])[0].sum())
        num_tokens = max(per_rank_denominator(step_tokens, dist.world_size), 1.0)
        loss_of = partial(
            _step_loss, model, train, device=device, precision=config.runtime.precision, num_tokens=num_tokens
        )
        totals = accumulate_gradients([model], share, plan.micro, loss_of, dist=dist, keys=("loss",))
        grad_norm = optimizer_step([model], optimizer, scheduler, grad_clip=config.optimizer.grad_clip)

        done = step + 1
        record = epoch_record(totals, grad_norm=grad_norm, scheduler=scheduler, order=order)
        record["train/response_tokens"] = step_tokens
        if validation is not None and run.due(done, every=config.train.eval_every):
            record["val/loss"] = evaluate()
            run.bar.set_postfix(loss=f"{totals['loss']:.3f}", val=f"{record['val/loss']:.3f}")
        run.log.log(done, record)
        run.bar.update(1)
        if run.due(done, every=config.train.checkpoint_every):  # every rank calls, rank 0 writes
            state = {"step": done, "order": order.state_dict(), "data_fingerprint": data_fingerprint}
            run.save_checkpoint(
                done, model=model, tokenizer=tokenizer, extra={}, info={**info, "step": done},
                optimizer=optimizer, scheduler=scheduler, state=state,
            )  # fmt: skip

    # 5. The final model, in the Hugging Face format. Every rank evaluates and saves (FSDP2 forward passes and
    #    gathering are collectives); rank 0 writes.
    run.close()
    val_loss = evaluate() if validation is not None else None
    info |= {"steps": plan.total_steps, "epochs": config.train.epochs, "val_loss": val_loss}
    final = run.finish(model, tokenizer, info=info)
    run.say(
        f"[sft] done: held-out response loss {val_loss if val_loss is None else round(val_loss, 4)}, "
        f"{run.elapsed():.0f}s; model in {final}"
    )
    return final


def _step_loss(model, train: SFTExamples, rows, *, device, precision: str, num_tokens: float):
    return sft_loss(model, train.rows(rows), device=device, precision=precision, num_tokens=num_tokens)
