"""DPO's training batches: K-way rankings as batch elements, and the loss of a batch against the frozen reference.

    EncodedRankings / PreferenceBatch    every response tokenized once; one batch element per prompt
    ranking_logprobs                     log pi(response | prompt) of every row, summed over the response (+ eos)
    reference_logprobs                   the [C, K] table of the frozen reference, computed once
    batch_loss                           DPO_LOSSES[loss] over a batch's rankings against that table

`prefer dpo` (prefer.stages.dpo) trains with them, and prefer.evaluation.direct_preference measures held-out
rankings with the same loss; they know nothing of either loop. The rows are eos + prompt + response + eos,
right-padded (no position ids needed: padding follows every real token), which is the format the reward model and
SFT read, not the left-padded episodes of prefer.evaluation.logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefer.data.formats import Comparison
from prefer.encoding import encode_comparison, fit_to_context
from prefer.objectives import DPO_LOSSES, masked_sum, next_token_targets, token_logprobs
from prefer.training.distributed import autocast

__all__ = [
    "EncodedRankings",
    "PreferenceBatch",
    "batch_loss",
    "encode_rankings",
    "ranking_logprobs",
    "reference_logprobs",
]


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
        encoded = encode_comparison(tokenizer, comparison, where=where)
        sequences.append([fit_to_context(ids, length, context, where=where) for ids, length in encoded])
        prompt_lengths.append(encoded[0][1])
    return EncodedRankings(sequences, prompt_lengths, [c.ranks for c in comparisons])


def ranking_logprobs(model, batch: PreferenceBatch, *, device, precision: str) -> torch.Tensor:
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
        flat = ranking_logprobs(reference, batch, device=device, precision=precision)
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
    policy = _as_grid(ranking_logprobs(model, batch, device=device, precision=precision), response_mask)
    return spec.loss(
        policy,
        reference[batch.prompts].to(device),
        batch.ranks.to(device),
        response_mask,
        **{spec.hyperparameter: hyperparameters[spec.hyperparameter]},
        num_prompts=num_prompts,
    )
