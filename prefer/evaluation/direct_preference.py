"""What DPO's held-out numbers measure of a policy and its frozen reference:

    heldout_preferences    implicit-reward accuracy, margin and loss on held-out rankings (the training loss,
                           prefer.training.preference_batches.batch_loss, against the reference's cached table)
    kl_on_samples          KL(policy || reference) on samples of the policy (prefer.evaluation.logprobs.response_kl,
                           the estimator of the RLHF results table)

`prefer dpo` (prefer.stages.dpo) logs them; its training batches and loss are prefer.training.preference_batches.
"""

from __future__ import annotations

import torch

from prefer.evaluation.logprobs import response_kl
from prefer.rl import sample_responses
from prefer.training.preference_batches import EncodedRankings, batch_loss

__all__ = ["heldout_preferences", "kl_on_samples"]


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
    (seed, step), the same on every rank) of sum_t log pi(y_t) - log pi_ref(y_t), eos included when it stops
    (prefer.evaluation.logprobs.response_kl, the per-response KL of the RLHF results table)."""
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
    kl = response_kl(
        policy,
        reference,
        queries,
        responses,
        temperature=1.0,
        pad_id=eos,
        batch_size=batch_size,
        device=device,
        precision=precision,
    )
    policy.train(was_training)
    return kl.mean().item()
