"""What KTO's held-out numbers measure (`prefer dpo` with dpo.loss=kto; its training batches and loss are
prefer.training.preference_batches): the implicit rewards beta (log pi - log pi_ref) of held-out labelled completions
against the reference point z0 of the held-out set."""

from __future__ import annotations

import torch

from prefer.training.preference_batches import EncodedFeedback, FeedbackObjective, mismatched_log_ratios

__all__ = ["heldout_feedback"]


@torch.no_grad()
def heldout_feedback(
    model,
    reference_model,
    feedback: EncodedFeedback,
    reference: torch.Tensor,
    *,
    objective: FeedbackObjective,
    batch_size: int,
    pad_id: int,
    device,
    precision: str,
) -> dict[str, float]:
    """z0 from all held-out examples rotated by one (as a training step's), then over every example: `accuracy`
    (r on its label's side of z0), `rewards_chosen` / `rewards_rejected` (mean beta r of the desirable /
    undesirable completions), `margin` (their difference), `loss` (mean per example), `z0` (clamped at 0)."""
    was_training = model.training
    model.eval()
    rows = list(range(len(feedback)))
    forward = {"batch_size": batch_size, "pad_id": pad_id, "device": device, "precision": precision}
    kl_estimate = mismatched_log_ratios(model, reference_model, feedback, rows, rows, **forward).mean().item()
    labels = torch.tensor(feedback.labels, dtype=torch.bool)
    sums = {"loss": 0.0, "accuracy": 0.0, "chosen": 0.0, "rejected": 0.0}
    for start in range(0, len(feedback), batch_size):
        indices = rows[start : start + batch_size]
        value, stats = objective.batch_loss(
            model,
            feedback,
            feedback.batch(indices, pad_id=pad_id),
            reference,
            denominator=1.0,  # a sum over the examples
            device=device,
            precision=precision,
            kl_estimate=kl_estimate,
        )
        sums["loss"] += value.item()
        sums["accuracy"] += stats["accuracy"].item() * len(indices)
        sums["chosen"] += stats["rewards_chosen"].item() * stats["num_desirable"].item()
        sums["rejected"] += stats["rewards_rejected"].item() * stats["num_undesirable"].item()
    model.train(was_training)
    desirable, undesirable = int(labels.sum()), int((~labels).sum())
    chosen, rejected = sums["chosen"] / max(1, desirable), sums["rejected"] / max(1, undesirable)
    return {
        "accuracy": sums["accuracy"] / len(feedback),
        "rewards_chosen": chosen,
        "rewards_rejected": rejected,
        "margin": chosen - rejected if desirable and undesirable else 0.0,
        "loss": sums["loss"] / len(feedback),
        "z0": max(0.0, kl_estimate),
    }
