"""One optimizer step of a language model on token blocks with per-token scores: the pretraining stage's step
(any objective of `prefer.pretraining_objectives`), timed on its own by bench/training_step.py and bench/gpu.py."""

from __future__ import annotations

import functools
import inspect

import torch

from prefer.devices import unwrap
from prefer.objectives import next_token_targets
from prefer.training.distributed import autocast, gradient_sync
from prefer.training.metrics import accumulate_stats, average_across_ranks
from prefer.training.optimization import optimizer_step

__all__ = ["train_step"]


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
