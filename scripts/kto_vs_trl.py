"""prefer's kto_loss against TRL's own KTOTrainer loss code on identical random float64 inputs.

Run it with a Python that has TRL installed (it installs nothing), e.g.::

    python3 -m venv /work/trl-venv && /work/trl-venv/bin/pip install torch==2.13.0 trl
    /work/trl-venv/bin/python scripts/kto_vs_trl.py

TRL (>= 1.x) has no standalone KTO loss function: the loss is computed inside ``KTOTrainer._compute_loss(model,
inputs, return_outputs)`` from the model's per-token log-probabilities. This script calls that method unbound on a
trainer built with ``object.__new__`` (no ``__init__``, so no model, tokenizer or dataset) that carries only the
attributes the method reads, with ``precompute_ref_logps=True`` so that the reference log-probabilities come from the
batch (TRL's ``precompute_ref_log_probs`` path). The "model" is a lookup table: a sequence of two tokens whose first
token is k gets the summed completion log-probability ``table[k]``, so that TRL's own code sums and slices its output
into exactly the chosen policy log-probabilities, and its KL pass (``_compute_kl_logps``, TRL's as well) into the
mismatched-pair log-probabilities. Gradients flow from TRL's loss back into the table, so the gradients are compared
too, as are TRL's logged ``kl`` and ``rewards/*`` metrics against prefer's stats.

Prints the largest absolute difference and exits 1 if it exceeds 1e-12.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trl  # noqa: E402
from trl import KTOTrainer  # noqa: E402

from prefer.objectives import kto_kl_estimate, kto_loss  # noqa: E402

TOLERANCE = 1e-12


class TableModel:
    """Stands in for a causal LM: row k of ``table`` is the summed completion log-probability of sequence [k, *]."""

    training = True

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, *, input_ids, labels=None, **_):
        log_probs = self.table[input_ids[:, 0]].unsqueeze(1)  # [B, T - 1] with T = 2: one completion position
        zeros = torch.zeros_like(log_probs.detach())
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, aux_loss=None)


def trl_kto(policy, reference, labels, policy_kl, reference_kl, *, beta, desirable_weight, undesirable_weight):
    """TRL's KTO loss, its gradient with respect to the policy log-probabilities, and its logged metrics."""
    n = policy.numel()
    table = torch.cat([policy, policy_kl]).detach().requires_grad_(True)
    model = TableModel(table)
    trainer = object.__new__(KTOTrainer)
    attributes = {
        "model": model,
        "accelerator": SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        "loss_type": "kto",
        "beta": beta,
        "desirable_weight": desirable_weight,
        "undesirable_weight": undesirable_weight,
        "calculate_KL": True,
        "precompute_ref_logps": True,
        "aux_loss_enabled": False,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
        "_total_train_tokens": 0,
        "_tp_size": 1,
    }
    for name, value in attributes.items():
        object.__setattr__(trainer, name, value)
    ones = torch.ones((n, 2), dtype=torch.long)
    inputs = {
        "input_ids": torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], dim=1),
        "attention_mask": ones,
        "completion_mask": ones,
        "KL_input_ids": torch.stack([n + torch.arange(n), torch.zeros(n, dtype=torch.long)], dim=1),
        "KL_attention_mask": ones,
        "KL_completion_mask": ones,
        "label": labels,
        "ref_logps": reference,
        "ref_KL_logps": reference_kl,
    }
    loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return loss.detach(), table.grad[:n], metrics


def prefer_kto(policy, reference, labels, policy_kl, reference_kl, *, beta, desirable_weight, undesirable_weight):
    policy = policy.detach().requires_grad_(True)
    loss, stats = kto_loss(
        policy,
        reference,
        labels,
        beta=beta,
        kl_estimate=kto_kl_estimate(policy_kl, reference_kl),
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    loss.backward()
    return loss.detach(), policy.grad, stats


def trials():
    generator = torch.Generator().manual_seed(20240202)
    for trial in range(200):
        n = int(torch.randint(1, 17, (), generator=generator))
        kind = trial % 4  # mixed labels, all desirable, all undesirable, mixed
        if kind == 1:
            labels = torch.ones(n, dtype=torch.bool)
        elif kind == 2:
            labels = torch.zeros(n, dtype=torch.bool)
        else:
            labels = torch.rand(n, generator=generator) < 0.5
        scale = float(torch.empty(()).uniform_(0.1, 20.0, generator=generator))
        reference = -scale * torch.rand(n, dtype=torch.float64, generator=generator) - 1.0
        policy = reference + scale * 0.3 * torch.randn(n, dtype=torch.float64, generator=generator)
        reference_kl = -scale * torch.rand(n, dtype=torch.float64, generator=generator) - 1.0
        # shift the mismatched log-ratios so that about half the trials have a negative mean (z0 clamped at 0)
        shift = float(torch.randn((), generator=generator))
        policy_kl = reference_kl + shift + 0.5 * torch.randn(n, dtype=torch.float64, generator=generator)
        hyper = {
            "beta": float(torch.empty(()).uniform_(0.01, 2.0, generator=generator)),
            "desirable_weight": float(torch.empty(()).uniform_(0.0, 3.0, generator=generator)),
            "undesirable_weight": float(torch.empty(()).uniform_(0.0, 3.0, generator=generator)),
        }
        yield (policy, reference, labels, policy_kl, reference_kl), hyper


def main() -> int:
    worst = {"loss": 0.0, "gradient": 0.0, "kl": 0.0, "rewards": 0.0}
    count = clamped = 0
    for args, hyper in trials():
        trl_loss, trl_grad, metrics = trl_kto(*args, **hyper)
        our_loss, our_grad, stats = prefer_kto(*args, **hyper)
        labels = args[2]
        worst["loss"] = max(worst["loss"], (trl_loss - our_loss).abs().item())
        worst["gradient"] = max(worst["gradient"], (trl_grad - our_grad).abs().max().item())
        worst["kl"] = max(worst["kl"], abs(metrics["kl"] - stats["kl"].item()))
        if labels.any():
            worst["rewards"] = max(worst["rewards"], abs(metrics["rewards/chosen"] - stats["rewards_chosen"].item()))
        if not labels.all():
            worst["rewards"] = max(
                worst["rewards"], abs(metrics["rewards/rejected"] - stats["rewards_rejected"].item())
            )
        count += 1
        clamped += int(stats["kl"].item() == 0.0)
    overall = max(worst.values())
    print(
        f"TRL {trl.__version__}, torch {torch.__version__}: {count} random float64 batches (1-16 examples; "
        f"{clamped} with the KL estimate clamped to 0)"
    )
    for name, value in worst.items():
        print(f"  max |TRL - prefer| {name:9s} {value:.3e}")
    print(f"max abs difference {overall:.3e} ({'PASS' if overall <= TOLERANCE else 'FAIL'}: tolerance {TOLERANCE:g})")
    return 0 if overall <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
