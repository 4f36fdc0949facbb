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
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefer.config import DPOConfig, save_config
from prefer.data.encoding import encode_example, fit_to_context
from prefer.data.formats import Comparison, read_rankings, record_locations, split_validation
from prefer.errors import PreferError
from prefer.files import file_fingerprint, write_json_atomic
from prefer.models.build import (
    check_same_vocabulary,
    context_length,
    count_parameters,
    load_model,
    load_tokenizer,
    set_dropout,
)
from prefer.objectives import DPO_LOSSES, masked_sum, next_token_targets, token_logprobs
from prefer.rollouts import make_rollout, sample_responses
from prefer.run_dir import releases_run_dirs
from prefer.training import (
    BlockOrder,
    MetricsLog,
    accumulate_stats,
    autocast,
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


# ------------------------------------------------------------------ data: rankings as batch elements


@dataclass(frozen=True)
class EncodedRankings:
    """Rankings with every response tokenized once.

    sequences:      sequences[c][k] = eos + prompt c + response k + eos (cut to the context)
    prompt_lengths: prompt_lengths[c] = tokens of eos + prompt c (the response starts there)
    ranks:          ranks[c][k] = place of response k (0 = best; equal = tie)
    """

    sequences: list[list[list[int]]]
    prompt_lengths: list[int]
    ranks: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.ranks)

    @property
    def width(self) -> int:
        return max(len(r) for r in self.ranks)

    def batch(self, indices: list[int], *, pad_id: int) -> PreferenceBatch:
        rows = [(c, k) for c in indices for k in range(len(self.ranks[c]))]
        width = max(len(self.sequences[c][k]) for c, k in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.bool)
        response = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (c, k) in enumerate(rows):
            sequence = self.sequences[c][k]
            ids[row, : len(sequence)] = torch.tensor(sequence)
            attention[row, : len(sequence)] = True
            response[row, self.prompt_lengths[c] : len(sequence)] = True
        ranks = torch.zeros((len(indices), self.width), dtype=torch.long)
        response_mask = torch.zeros((len(indices), self.width), dtype=torch.bool)
        for b, c in enumerate(indices):
            ranks[b, : len(self.ranks[c])] = torch.tensor(self.ranks[c])
            response_mask[b, : len(self.ranks[c])] = True
        return PreferenceBatch(ids, attention, response, ranks, response_mask, torch.tensor(indices))


@dataclass(frozen=True)
class PreferenceBatch:
    """B prompts with K_b responses each, every response one row of `ids` (so it is forwarded once).

    ids, attention_mask, response_tokens: [N, T] (N = sum K_b, prompt-major, right-padded); response_tokens marks
        the response and its eos, the tokens whose log-probabilities are summed
    ranks, response_mask: [B, K] (as ranking_loss); prompts: [B] indices into the EncodedRankings
    """

    ids: torch.Tensor
    attention_mask: torch.Tensor
    response_tokens: torch.Tensor
    ranks: torch.Tensor
    response_mask: torch.Tensor
    prompts: torch.Tensor


def encode_rankings(comparisons: list[Comparison], locations: list[str], tokenizer, *, context: int) -> EncodedRankings:
    sequences, prompt_lengths = [], []
    for comparison, where in zip(comparisons, locations):
        encoded = [encode_example(tokenizer, comparison.prompt, response) for response in comparison.responses]
        sequences.append([fit_to_context(ids, length, context, where=where) for ids, length in encoded])
        prompt_lengths.append(encoded[0][1])
    return EncodedRankings(sequences, prompt_lengths, [c.ranks for c in comparisons])


def sequence_logprobs(model, batch: PreferenceBatch, *, device, precision: str) -> torch.Tensor:
    """[N] log pi(response | prompt) of every row, summed over the response tokens (and its eos)."""
    ids = batch.ids.to(device)
    targets, mask = next_token_targets(ids, batch.response_tokens.to(device))  # mask[t]: token t + 1 is scored
    with autocast(device, precision):
        logits = model(input_ids=ids, attention_mask=batch.attention_mask.to(device).long()).logits[:, :-1]
    return masked_sum(token_logprobs(logits.float(), targets), mask, dim=1)


def _as_grid(flat: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N] per-response values -> [B, K] (padding slots 0)."""
    return torch.zeros(response_mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(response_mask, flat)


@torch.no_grad()
def reference_logprobs(
    reference, rankings: EncodedRankings, *, batch_size: int, pad_id: int, device, precision: str
) -> torch.Tensor:
    """[C, K] summed log-probabilities of every response under the frozen reference (eval mode), once."""
    table = torch.zeros((len(rankings), rankings.width))
    for start in range(0, len(rankings), batch_size):
        indices = list(range(start, min(start + batch_size, len(rankings))))
        batch = rankings.batch(indices, pad_id=pad_id)
        flat = sequence_logprobs(reference, batch, device=device, precision=precision)
        table[indices] = _as_grid(flat, batch.response_mask.to(device)).cpu()
    return table


def batch_loss(
    model,
    batch: PreferenceBatch,
    reference: torch.Tensor,
    *,
    loss: str,
    hyperparameters: dict,
    device,
    precision: str,
    num_prompts: float | None,
):
    """The chosen preference loss of a batch; `reference` is the cached [C, K] table."""
    spec = DPO_LOSSES[loss]
    response_mask = batch.response_mask.to(device)
    policy = _as_grid(sequence_logprobs(model, batch, device=device, precision=precision), response_mask)
    return spec.loss(
        policy,
        reference[batch.prompts].to(device),
        batch.ranks.to(device),
        response_mask,
        **{spec.hyperparameter: hyperparameters[spec.hyperparameter]},
        num_prompts=num_prompts,
    )


@torch.no_grad()
def heldout_preferences(
    model,
    rankings: EncodedRankings,
    reference: torch.Tensor,
    *,
    batch_size: int,
    pad_id: int,
    device,
    precision: str,
    **loss,
) -> dict[str, float]:
    """Implicit-reward pairwise accuracy and margin pooled over every non-tied held-out pair; mean loss per prompt."""
    was_training = model.training
    model.eval()
    correct = margins = pairs = loss_sum = 0.0
    for start in range(0, len(rankings), batch_size):
        indices = list(range(start, min(start + batch_size, len(rankings))))
        value, stats = batch_loss(
            model,
            rankings.batch(indices, pad_id=pad_id),
            reference,
            device=device,
            precision=precision,
            num_prompts=1.0,
            **loss,
        )
        correct += float(stats["accuracy"] * stats["num_pairs"])
        margins += float(stats["margin_mean"] * stats["num_pairs"])
        pairs += float(stats["num_pairs"])
        loss_sum += value.item()  # a sum over prompts (num_prompts=1)
    model.train(was_training)
    return {
        "accuracy": correct / max(1.0, pairs),
        "margin": margins / max(1.0, pairs),
        "loss": loss_sum / max(1, len(rankings)),
        "pairs": pairs,
    }


@torch.no_grad()
def kl_on_samples(
    policy,
    reference,
    queries: list[list[int]],
    *,
    seed: int,
    step: int,
    max_new_tokens: int,
    eos: int,
    batch_size: int,
    device,
    precision: str,
) -> float:
    """KL(policy || reference) in nats per response: the mean over samples of the policy (temperature 1, seeded by
    (seed, step), the same on every rank) of sum_t log pi(y_t) - log pi_ref(y_t), eos included when it stops."""
    was_training = policy.training
    policy.eval()
    sampled = sample_responses(
        policy,
        queries,
        first=0,
        chunk=batch_size,
        seed=seed,
        iteration=step,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        temperature=1.0,
    )
    responses = [r + [eos] if len(r) < max_new_tokens else r for r in sampled]
    responses = [r or [eos] for r in responses]
    rollout = make_rollout(
        policy,
        reference,
        None,
        queries,
        responses,
        rewards=torch.zeros(len(queries)),
        gold=torch.zeros(len(queries)),
        temperature=1.0,
        pad_id=eos,
        batch_size=batch_size,
        device=device,
        precision=precision,
    )
    policy.train(was_training)
    return masked_sum(rollout.logprobs - rollout.ref_logprobs, rollout.response_mask, dim=1).mean().item()


# ------------------------------------------------------------------ the stage


@releases_run_dirs
def dpo(config: DPOConfig, *, resume: bool = False) -> Path:
    """Train the policy on rankings with the chosen preference loss; returns `<out_dir>/final` (an HF causal LM)."""
    dist, device = init_distributed(config.runtime.device)
    run_dir = Path(config.out_dir)
    checkpoint = check_run_dir(run_dir, DPOConfig, config, resume)
    set_seed(config.runtime.seed)
    say = print if dist.is_main else (lambda *a, **k: None)

    # 1. Models: the policy (from the SFT model, or the checkpoint being resumed) and the frozen reference.
    reference_path = config.model.reference or config.model.init_from
    for field, path in (("model.init_from", config.model.init_from), ("model.reference", reference_path)):
        if not (Path(path) / "config.json").is_file():
            raise PreferError(f"{field}: {path} is not a Hugging Face model directory (no config.json)")
    tokenizer = load_tokenizer(config.model.init_from)
    if config.model.reference is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(reference_path), what=f"model.reference {reference_path}")
    policy = load_model(checkpoint / "model" if checkpoint is not None else config.model.init_from, tokenizer=tokenizer)
    reference = load_model(reference_path, tokenizer=tokenizer).to(device).eval()
    reference.requires_grad_(False)
    set_dropout(policy, config.model.dropout)
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
    comparisons = read_rankings(config.data.rankings)
    locations = record_locations(config.data.rankings)
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
    kl_sources = [comparisons[i].prompt for i in (val_index or train_index)]
    kl_queries = [
        q
        for q in ([eos, *tokenizer.encode(p, add_special_tokens=False)] for p in kl_sources)
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
    reference_for = lambda rankings: reference_logprobs(
        reference,
        rankings,
        batch_size=micro,
        pad_id=eos,  # noqa: E731
        device=device,
        precision=config.runtime.precision,
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
