"""Reward model training (InstructGPT step 2): one loop, top to bottom.

    rankings JSONL -> every response of a prompt tokenized once (eos + prompt + response + eos)
    -> one batch element per prompt: rewards [B, K] -> ranking_loss over its C(K, 2) non-tied pairs
    -> held-out pairwise accuracy -> bias so that the demonstrations score a mean of 0 -> HF directory

`prefer reward` calls `reward(config)`. Run it under `torchrun --nproc_per_node N` for DDP
(or FSDP2 with runtime.parallel=fsdp; docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from prefer.config import RewardConfig
from prefer.data.formats import Comparison, read_demonstrations, read_located, read_rankings, record_locations
from prefer.data.splits import split_validation
from prefer.encoding import encode_comparison, fit_to_context
from prefer.files import file_fingerprint, write_json_atomic
from prefer.models.build import check_model_dir, count_parameters, load_tokenizer, set_dropout
from prefer.models.lora import model_source, prepare
from prefer.models.reward_model import RewardModel, build_reward_model, right_pad
from prefer.objectives import ranking_loss
from prefer.run_dir import releases_run_dirs
from prefer.training import (
    autocast,
    check_checkpoint_vocabulary,
    optimizer_step,
    per_rank_denominator,
    wrap_model,
)
from prefer.training.run import EpochPlan, StageRun, accumulate_gradients, epoch_record


@dataclass(frozen=True)
class EncodedRankings:
    """Rankings with every response tokenized once.

    sequences: sequences[c][k] = token ids of prompt c + response k + eos (cut to the context)
    ranks:     ranks[c][k] = place of response k (0 = best; equal = tie)
    """

    sequences: list[list[list[int]]]
    ranks: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.ranks)

    def batch(self, indices: list[int]) -> RankingBatch:
        responses = [ids for c in indices for ids in self.sequences[c]]
        ids, attention_mask = right_pad(responses, pad_id=0)  # pad ids are never read: the mask hides them
        width = max(len(self.ranks[c]) for c in indices)
        ranks = torch.zeros((len(indices), width), dtype=torch.long)
        response_mask = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, c in enumerate(indices):
            ranks[row, : len(self.ranks[c])] = torch.tensor(self.ranks[c])
            response_mask[row, : len(self.ranks[c])] = True
        return RankingBatch(ids, attention_mask, ranks, response_mask)


@dataclass(frozen=True)
class RankingBatch:
    """B prompts with K_b <= K responses each; each response is one row of `ids`, so it is scored once.

    ids:            [N, T] int64, N = sum of K_b, prompt-major (prompt b's responses in order), right-padded
    attention_mask: [N, T] bool
    ranks:          [B, K] int64 (0 = best; padding slots hold 0 and are masked out)
    response_mask:  [B, K] bool, False = padding slot of a prompt with fewer responses
    """

    ids: torch.Tensor
    attention_mask: torch.Tensor
    ranks: torch.Tensor
    response_mask: torch.Tensor


def encode_rankings(comparisons: list[Comparison], locations: list[str], reward_model: RewardModel) -> EncodedRankings:
    """Text as the reward model scores it (eos + prompt + response + eos); a conversational pair as its chat
    rendering (prefer.encoding.encode_comparison)."""
    sequences = [
        [
            fit_to_context(ids, prompt_length, reward_model.context, where=where)
            for ids, prompt_length in encode_comparison(reward_model.tokenizer, c, where=where)
        ]
        for c, where in zip(comparisons, locations)
    ]
    return EncodedRankings(sequences, [c.ranks for c in comparisons])


def batch_loss(model, batch: RankingBatch, *, device, precision: str, num_prompts: float | None):
    """ranking_loss of a batch: rewards [N] of every response, scattered into [B, K] by the response mask."""
    with autocast(device, precision):
        flat = model(batch.ids.to(device), batch.attention_mask.to(device))  # [N]
    response_mask = batch.response_mask.to(device)
    rewards = torch.zeros(response_mask.shape, device=device).masked_scatter(response_mask, flat.float())
    return ranking_loss(rewards, batch.ranks.to(device), response_mask, num_prompts=num_prompts)


@torch.no_grad()
def heldout_accuracy(model, rankings: EncodedRankings, *, batch_size: int, device, precision: str) -> dict[str, float]:
    """Pairwise accuracy (r_w > r_l; equal rewards count as wrong) pooled over every non-tied held-out pair,
    and the mean per-prompt loss."""
    was_training = model.training
    model.eval()
    correct = pairs = loss_sum = 0.0
    for start in range(0, len(rankings), batch_size):
        indices = list(range(start, min(start + batch_size, len(rankings))))
        loss, stats = batch_loss(model, rankings.batch(indices), device=device, precision=precision, num_prompts=1.0)
        correct += float(stats["accuracy"] * stats["num_pairs"])
        pairs += float(stats["num_pairs"])
        loss_sum += loss.item()  # a sum over prompts (num_prompts=1)
    model.train(was_training)
    return {"accuracy": correct / max(1.0, pairs), "loss": loss_sum / max(1, len(rankings)), "pairs": pairs}


@releases_run_dirs
def reward(config: RewardConfig, *, resume: bool = False) -> Path:
    """Train a reward model on rankings; returns `<out_dir>/final` (HF sequence classifier + reward_bias)."""
    run = StageRun(config, RewardConfig, resume=resume, name="reward", quiet_without_progress=False)
    dist, device, checkpoint = run.dist, run.device, run.checkpoint
    # The rankings (and demonstrations) are read, and a bad line reported, before any model is loaded.
    comparisons, locations = read_located(read_rankings, config.data.rankings)
    demonstrations = None
    if config.data.demonstrations is not None:
        demonstrations = read_demonstrations(config.data.demonstrations, conversations=False)
    check_model_dir(config.model.init_from, field="model.init_from", causal_lm=True)

    # 1. Model: the causal LM's trunk + a fresh scalar head (or the checkpoint being resumed).
    reward_model = build_reward_model(model_source(config.model.init_from, checkpoint, config.lora))
    if checkpoint is not None:
        check_checkpoint_vocabulary(
            checkpoint, reward_model.tokenizer, load_tokenizer(config.model.init_from, field="model.init_from")
        )
    set_dropout(reward_model.model, config.model.dropout)
    prepare(
        reward_model.model,
        config.lora,
        checkpoint=checkpoint,
        trainable=("score",),
        gradient_checkpointing=config.runtime.gradient_checkpointing,
    )
    if config.model.context is not None:
        reward_model.context = min(reward_model.context, config.model.context)
    info = {"stage": "reward", "init_from": config.model.init_from, "rankings": config.data.rankings}

    # 2. Data: comparisons split by prompt into train / validation, every response tokenized once.
    train_index, val_index = split_validation(len(comparisons), config.data.validation_fraction, config.runtime.seed)
    train = encode_rankings([comparisons[i] for i in train_index], [locations[i] for i in train_index], reward_model)
    validation = (
        encode_rankings([comparisons[i] for i in val_index], [locations[i] for i in val_index], reward_model)
        if val_index
        else None
    )
    # The bias is set after training from these pairs; a bad file must fail now, not after training.
    bias_ids = _bias_sequences(config, demonstrations, comparisons, locations, reward_model)
    reward_model.to(device).train()
    model = wrap_model(reward_model, dist, device, parallel=config.runtime.parallel)

    # 3. Batch geometry (in prompts), optimizer, schedule, the data order (restored on resume).
    plan = EpochPlan.of(config.train, len(train), dist)
    data_fingerprint = f"{file_fingerprint(config.data.rankings)}-{len(train)}"
    optimizer, scheduler, order, start_step = plan.start(
        run, [reward_model], optimizer=config.optimizer, schedule=config.schedule, data_fingerprint=data_fingerprint,
        data_name=str(config.data.rankings), restore_modules=[reward_model.model],
    )  # fmt: skip
    run.begin(start=start_step, total=plan.total_steps)
    run.say(
        f"[reward] {count_parameters(reward_model) / 1e6:.2f}M parameters, {len(train)} prompts "
        f"(+{len(val_index)} held out), {plan.total_steps} steps of {plan.batch_size} prompts, "
        f"lr {config.optimizer.lr:g}, device {device}"
    )
    evaluate = partial(
        heldout_accuracy,
        reward_model,
        validation,
        batch_size=plan.micro,
        device=device,
        precision=config.runtime.precision,
    )

    # 4. The loop.
    for step in range(start_step, plan.total_steps):
        _, share = plan.next(order)  # the global batch of prompts; this rank takes its contiguous share
        # Every prompt has a non-tied pair (read_rankings rejects all-tie lines), so each counts once in the
        # step's mean; DDP averages ranks, hence the division (see objectives.common).
        loss_of = partial(
            _step_loss,
            model,
            train,
            device=device,
            precision=config.runtime.precision,
            num_prompts=per_rank_denominator(plan.batch_size, dist.world_size),
        )
        keys = ("loss", "accuracy", "margin_mean", "reward_mean")
        totals = accumulate_gradients([model], share.tolist(), plan.micro, loss_of, dist=dist, keys=keys)
        grad_norm = optimizer_step([reward_model], optimizer, scheduler, grad_clip=config.optimizer.grad_clip)

        done = step + 1
        record = epoch_record(totals, grad_norm=grad_norm, scheduler=scheduler, order=order)
        if validation is not None and run.due(done, every=config.train.eval_every):
            heldout = evaluate()
            record.update({"val/accuracy": heldout["accuracy"], "val/loss": heldout["loss"]})
            run.bar.set_postfix(loss=f"{totals['loss']:.3f}", val_accuracy=f"{heldout['accuracy']:.3f}")
        run.log.log(done, record)
        run.bar.update(1)
        if run.due(done, every=config.train.checkpoint_every):  # every rank calls, rank 0 writes
            state = {"step": done, "order": order.state_dict(), "data_fingerprint": data_fingerprint}
            run.save_checkpoint(
                done, model=reward_model.model, tokenizer=reward_model.tokenizer, extra={},
                info={**info, "step": done, "reward_bias": 0.0}, optimizer=optimizer, scheduler=scheduler, state=state,
            )  # fmt: skip
    run.bar.close()

    # 5. Bias: the demonstrations (or each ranking's best response) score a mean of 0 (the paper); final/.
    final = _finish(run, reward_model, evaluate if validation is not None else None, bias_ids, info, plan)
    return final


def _step_loss(model, train: EncodedRankings, rows, *, device, precision: str, num_prompts: float):
    return batch_loss(model, train.batch(rows), device=device, precision=precision, num_prompts=num_prompts)


def _bias_sequences(config, demonstrations, comparisons, locations, reward_model: RewardModel) -> list[list[int]]:
    """What the bias is set from: the demonstrations, or each ranking's best response, encoded as for training (a
    conversational pair: its chat rendering)."""
    if config.data.demonstrations is not None:
        pairs = [(d.prompt, d.response) for d in demonstrations]
        return reward_model.encode(pairs, where=record_locations(config.data.demonstrations))
    best = encode_rankings(comparisons, locations, reward_model)
    return [responses[ranks.index(0)] for responses, ranks in zip(best.sequences, best.ranks)]


def _finish(run: StageRun, reward_model: RewardModel, evaluate, bias_ids, info: dict, plan: EpochPlan) -> Path:
    """Held-out accuracy, the bias that makes the bias sequences score a mean of 0, `<out_dir>/final` and
    results.json. Every rank evaluates, scores and calls save (FSDP2 forward passes and gathering are collectives);
    rank 0 writes."""
    config, final = run.config, run.run_dir / "final"
    heldout = evaluate() if evaluate is not None else None
    reward_model.bias = 0.0
    reward_model.bias = -float(reward_model.rewards_of_ids(bias_ids, batch_size=plan.micro).mean())
    results = {
        "val_accuracy": heldout["accuracy"] if heldout else None,
        "val_loss": heldout["loss"] if heldout else None,
        "val_pairs": heldout["pairs"] if heldout else 0,
        "bias_from": config.data.demonstrations or "best response of each ranking",
        "steps": plan.total_steps,
    }
    reward_model.save(final, {**info, **results})
    if run.dist.is_main:
        write_json_atomic(run.run_dir / "results.json", {**results, "reward_bias": reward_model.bias})
    # Logged once final/ is whole (a kill before this reruns the step; MetricsLog skips a line it already holds).
    run.log.log(
        plan.total_steps,
        {"final/reward_bias": reward_model.bias, **({"final/val_accuracy": heldout["accuracy"]} if heldout else {})},
    )
    accuracy = "n/a" if heldout is None else f"{heldout['accuracy']:.3f} on {heldout['pairs']:.0f} pairs"
    run.say(
        f"[reward] done: held-out pairwise accuracy {accuracy}, bias {reward_model.bias:+.4f}, "
        f"{run.elapsed():.0f}s; model in {final}"
    )
    run.close()
    return final
