"""DPO's training batches: K-way rankings as batch elements, and the loss of a batch against the frozen reference.

    EncodedRankings / PreferenceBatch    every response tokenized once; one batch element per prompt
    ranking_logprobs                     log pi(response | prompt) of every row, summed over the response (+ eos)
    reference_logprobs                   the [C, K] table of the frozen reference, computed once
    batch_loss                           DPO_LOSSES[loss] over a batch's rankings against that table
    EncodedFeedback                      KTO's unpaired binary feedback: rankings of one response each, labelled
    mismatched_log_ratios, kto_step_kl   z0's estimate from the rotated mismatched pairs of an optimizer step
    feedback_batch_loss                  FEEDBACK_LOSSES[loss] over a batch of labelled completions
    OBJECTIVES                           dpo.loss -> what `prefer dpo` reads, encodes and trains with

`prefer dpo` (prefer.stages.dpo) trains with them, and prefer.evaluation.direct_preference measures held-out
rankings with the same loss; they know nothing of either loop. The rows are eos + prompt + response + eos,
right-padded (no position ids needed: padding follows every real token), which is the format the reward model and
SFT read, not the left-padded episodes of prefer.evaluation.logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefer.data.feedback import Feedback, read_feedback
from prefer.data.formats import Comparison, read_rankings
from prefer.encoding import encode_chat_example, encode_comparison, encode_example, fit_to_context
from prefer.objectives import (
    DPO_LOSSES,
    FEEDBACK_LOSSES,
    kto_mismatched_index,
    masked_sum,
    next_token_targets,
    token_logprobs,
)
from prefer.training.distributed import autocast
from prefer.training.metrics import average_across_ranks

__all__ = [
    "OBJECTIVES",
    "EncodedFeedback",
    "EncodedRankings",
    "FeedbackObjective",
    "RankingObjective",
    "encode_feedback",
    "feedback_batch_loss",
    "kto_step_kl",
    "mismatched_log_ratios",
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


# ------------------------------------------------------------------ binary feedback (KTO)


@dataclass(frozen=True)
class EncodedFeedback(EncodedRankings):
    """Unpaired examples as rankings of one response each, so that their batches and the reference's table ([N, 1])
    are the rankings' own; `labels[i]`: example i is desirable; `context`: what a mismatched pair is cut to."""

    labels: tuple[bool, ...] = ()
    context: int = 0

    def mismatched(self, prompts: list[int], completions: list[int]) -> EncodedRankings:
        """Example p's prompt with example c's completion for each (p, c): their tokens concatenated (TRL's KL
        sequences are the same concatenation), cut to the context; the prompt keeps at least one response token."""
        sequences = [
            [
                (self.sequences[p][0][: self.prompt_lengths[p]] + self.sequences[c][0][self.prompt_lengths[c] :])[
                    : self.context
                ]
            ]
            for p, c in zip(prompts, completions)
        ]
        return EncodedRankings(sequences, [self.prompt_lengths[p] for p in prompts], [(0,)] * len(prompts))


def encode_feedback(examples: list[Feedback], locations: list[str], tokenizer, *, context: int) -> EncodedFeedback:
    """Each example tokenized once, as a ranking's response is: eos + prompt + completion + eos for text, the chat
    template's rendering for a conversational example (prefer.encoding)."""
    sequences, prompt_lengths = [], []
    for example, where in zip(examples, locations):
        if example.prompt_messages is None:
            ids, length = encode_example(tokenizer, example.prompt, example.completion)
        else:
            ids, length = encode_chat_example(
                tokenizer, example.prompt_messages, example.completion_messages, where=where
            )
        sequences.append([fit_to_context(ids, length, context, where=where)])
        prompt_lengths.append(length)
    labels = tuple(example.label for example in examples)
    return EncodedFeedback(sequences, prompt_lengths, [(0,)] * len(examples), labels=labels, context=context)


@torch.no_grad()
def mismatched_log_ratios(
    model, reference, feedback: EncodedFeedback, rows: list[int], positions, *, batch_size, pad_id, device, precision
) -> torch.Tensor:
    """[len(positions)] log pi(y_j | x_i) - log pi_ref(y_j | x_i) of the mismatched pairs at `positions` of `rows`
    rotated by one (prefer.objectives.kto_mismatched_index: the prompt at position i gets the completion at i - 1).
    The model is forwarded in its own mode (training, as TRL does), without gradient."""
    rotated = kto_mismatched_index(len(rows)).tolist()
    pairs = feedback.mismatched([rows[i] for i in positions], [rows[rotated[i]] for i in positions])
    policy = torch.cat(
        [
            ranking_logprobs(
                model,
                pairs.batch(list(range(start, min(start + batch_size, len(pairs)))), pad_id=pad_id),
                device=device,
                precision=precision,
            ).cpu()
            for start in range(0, len(pairs), batch_size)
        ]
    )
    frozen = reference_logprobs(
        reference, pairs, batch_size=batch_size, pad_id=pad_id, device=device, precision=precision
    )
    return policy - frozen[:, 0]


def kto_step_kl(model, reference, feedback: EncodedFeedback, rows: list[int], *, dist, **forward) -> float:
    """KTO's reference point for one optimizer step, before its clamp at 0: the mean log-ratio over the whole step's
    batch `rows` (every rank's share) rotated by one. Each rank forwards the pairs of its own contiguous share and
    the ranks' means are averaged (equal shares), so 1 process x N micro-batches, N ranks x 1 and one batch of N
    estimate the same z0 and take the same step; with one process and no accumulation it is TRL's per-batch z0."""
    share = len(rows) // dist.world_size
    positions = range(dist.rank * share, (dist.rank + 1) * share)
    ratios = mismatched_log_ratios(model, reference, feedback, rows, positions, **forward)
    return average_across_ranks({"kl": ratios.mean().item()}, dist)["kl"]


def feedback_batch_loss(
    model,
    batch: PreferenceBatch,
    reference: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: str,
    hyperparameters: dict,
    kl_estimate: float,
    device,
    precision: str,
    num_examples: float | None,
):
    """FEEDBACK_LOSSES[loss] of a batch of examples; `reference` is the cached [N, 1] table, `labels` all N labels."""
    policy = ranking_logprobs(model, batch, device=device, precision=precision)
    return FEEDBACK_LOSSES[loss](
        policy,
        reference[batch.prompts, 0].to(device),
        labels[batch.prompts].to(device),
        kl_estimate=kl_estimate,
        **hyperparameters,
        num_examples=num_examples,
    )


# ------------------------------------------------------------------ what `prefer dpo` trains with, by dpo.loss


class RankingObjective:
    """DPO, IPO, listwise DPO: `data.rankings`, one batch element per prompt with its K ranked responses."""

    data_field, unit = "rankings", "prompts"
    keys = ("loss", "accuracy", "margin_mean")
    read = staticmethod(read_rankings)
    encode = staticmethod(encode_rankings)
    info: dict = {}  # what the checkpoint records beyond loss, beta and tau

    def __init__(self, loss: str, hyperparameters: dict):
        name = DPO_LOSSES[loss].hyperparameter
        self.loss_args = {"loss": loss, "hyperparameters": {name: hyperparameters[name]}}

    def warnings(self, train: EncodedRankings) -> list[str]:
        return []

    def step_state(self, model, reference, data, rows, *, dist, **forward) -> dict:
        return {}  # nothing is estimated over the step before its micro-batches

    def batch_loss(self, model, data, batch, reference_table, *, denominator, device, precision, **state):
        return batch_loss(
            model, batch, reference_table, device=device, precision=precision, num_prompts=denominator, **self.loss_args
        )


class FeedbackObjective:
    """KTO: `data.feedback`, one batch element per labelled example; z0 estimated per optimizer step (kto_step_kl)."""

    data_field, unit = "feedback", "examples"
    keys = ("loss", "accuracy", "kl", "rewards_chosen", "rewards_rejected", "num_desirable", "num_undesirable")
    read = staticmethod(read_feedback)
    encode = staticmethod(encode_feedback)

    def __init__(self, loss: str, hyperparameters: dict):
        names = ("beta", "desirable_weight", "undesirable_weight")
        self.loss_args = {"loss": loss, "hyperparameters": {name: hyperparameters[name] for name in names}}
        self.info = {name: hyperparameters[name] for name in names[1:]}

    def warnings(self, train: EncodedFeedback) -> list[str]:
        """The paper's advice (Ethayarajh et al. 2024, Eq. 8), checked on the training examples: lambda_D n_D /
        (lambda_U n_U) in [1, 4/3]."""
        weights = self.loss_args["hyperparameters"]
        desirable, undesirable = weights["desirable_weight"], weights["undesirable_weight"]
        n_d = sum(train.labels)
        n_u = len(train.labels) - n_d
        if n_d == 0 or n_u == 0:
            return [f"every training example is {'undesirable' if n_d == 0 else 'desirable'}: KTO needs both"]
        ratio = desirable * n_d / (undesirable * n_u)
        if 1 <= ratio <= 4 / 3:
            return []
        low, high = undesirable * n_u / n_d, 4 / 3 * undesirable * n_u / n_d
        return [
            f"lambda_D n_D / (lambda_U n_U) = {desirable:g} x {n_d} / ({undesirable:g} x {n_u}) = {ratio:.3g} is "
            f"outside [1, 4/3] (KTO paper, Eq. 8); e.g. dpo.desirable_weight in [{low:.3g}, {high:.3g}]"
        ]

    def step_state(self, model, reference, data, rows, *, dist, **forward) -> dict:
        return {"kl_estimate": kto_step_kl(model, reference, data, rows, dist=dist, **forward)}

    def batch_loss(self, model, data, batch, reference_table, *, denominator, device, precision, kl_estimate):
        return feedback_batch_loss(
            model,
            batch,
            reference_table,
            torch.tensor(data.labels, dtype=torch.bool),
            kl_estimate=kl_estimate,
            device=device,
            precision=precision,
            num_examples=denominator,
            **self.loss_args,
        )


OBJECTIVES = {**dict.fromkeys(DPO_LOSSES, RankingObjective), **dict.fromkeys(FEEDBACK_LOSSES, FeedbackObjective)}
