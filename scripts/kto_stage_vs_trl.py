"""One KTO step of `prefer dpo dpo.loss=kto` against TRL's KTOTrainer on a tiny GPT-2 and identical tokens.

Run it with a Python that has TRL installed (it installs nothing; no network), e.g.::

    /work/trl-venv/bin/python scripts/kto_stage_vs_trl.py

Where scripts/kto_vs_trl.py checks the loss function on given log-probabilities, this checks the stage's pieces
end to end on a real model: prefer's tokenization (eos + prompt + completion + eos), its batches, its per-step z0 from
the rotated mismatched pairs (prefer.training.preference_batches.kto_step_kl), the cached reference table, and
FeedbackObjective.batch_loss, against TRL's own collator (DataCollatorForUnpairedPreference), its KL completions
(the completions rotated by one, as its dataset preparation makes them) and `KTOTrainer.compute_loss` with a separate
reference model. Both see the same 8 examples in the same order, one batch, no accumulation, dropout off (eval mode).
Compared: the loss, z0 (TRL's logged `kl`), the mean rewards, and the gradient of every parameter.

Prints the largest absolute differences and exits 1 if one exceeds 1e-4 relative to the compared value's size (at
least 1): both forward in float32, and TRL's fused LM head sums the log-probabilities in another order (measured on
this machine: loss 1.1e-5, z0 = 18.4 off by 2.5e-4, rewards 1e-4, gradients 6e-7).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset  # noqa: E402
from trl import KTOConfig, KTOTrainer  # noqa: E402
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference  # noqa: E402

from prefer.data.feedback import Feedback  # noqa: E402
from prefer.data.tokenizer import train_tokenizer  # noqa: E402
from prefer.models.build import build_model  # noqa: E402
from prefer.training import Distributed  # noqa: E402
from prefer.training.preference_batches import (  # noqa: E402
    FeedbackObjective,
    encode_feedback,
    ranking_logprobs,
    reference_logprobs,
)

TOLERANCE = 1e-4  # relative
BETA, DESIRABLE, UNDESIRABLE = 0.1, 1.3, 0.8
WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree", "lamp", "road"]


def models(tokenizer, data):
    """The reference: a fresh tiny GPT-2; the policy: it after a few likelihood steps on the examples' completions,
    so that it gives them (and so the mismatched pairs) more probability: r != 0 and z0 > 0."""
    torch.manual_seed(0)
    reference = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    policy = copy.deepcopy(reference)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    batch = data.batch(list(range(len(data))), pad_id=0)
    for _ in range(3):
        logps = ranking_logprobs(policy, batch, device=torch.device("cpu"), precision="fp32")
        (-logps.mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return policy.eval(), reference.eval()


def examples() -> list[Feedback]:
    g = torch.Generator().manual_seed(1)
    pick = lambda n: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))  # noqa: E731
    return [Feedback(pick(2), " " + pick(int(3 + i % 4)) + ".", bool(i % 3 != 0)) for i in range(8)]


def prefer_step(policy, reference, data):
    rows = list(range(len(data)))
    forward = {"batch_size": 4, "pad_id": 0, "device": torch.device("cpu"), "precision": "fp32"}
    table = reference_logprobs(reference, data, **forward)
    objective = FeedbackObjective(
        "kto", {"beta": BETA, "desirable_weight": DESIRABLE, "undesirable_weight": UNDESIRABLE}
    )
    state = objective.step_state(policy, reference, data, rows, dist=Distributed(), **forward)
    loss, stats = objective.batch_loss(
        policy, data, data.batch(rows, pad_id=0), table, denominator=len(rows), device=forward["device"],
        precision="fp32", **state,
    )  # fmt: skip
    loss.backward()
    return loss.item(), {k: v.item() for k, v in stats.items()}, state["kl_estimate"]


def trl_step(policy, reference, tokenizer, data, output_dir):
    args = KTOConfig(
        output_dir=output_dir, per_device_train_batch_size=len(data), beta=BETA, desirable_weight=DESIRABLE,
        undesirable_weight=UNDESIRABLE, report_to=[], max_length=None, use_cpu=True, precompute_ref_log_probs=False,
        gradient_checkpointing=False,
    )  # fmt: skip
    dataset = Dataset.from_list([{"prompt": "x", "completion": " y", "label": True}] * 2)  # unused: batch below
    trainer = KTOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    # prefer's tokens as TRL's columns: prompt_ids = eos + prompt, completion_ids = completion + eos; TRL's KL
    # completions are the completions rotated by one within the batch (its add_kl_completion_ids)
    prompts = [s[0][:n] for s, n in zip(data.sequences, data.prompt_lengths)]
    completions = [s[0][n:] for s, n in zip(data.sequences, data.prompt_lengths)]
    rotated = [completions[-1]] + completions[:-1]
    rows = [
        {"prompt_ids": p, "completion_ids": c, "KL_completion_ids": k, "label": label}
        for p, c, k, label in zip(prompts, completions, rotated, data.labels)
    ]
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)(rows)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items() if v}  # "eval": the model is in eval mode
    return loss.item(), metrics, trainer.model


def main() -> int:
    tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
    data = encode_feedback(examples(), [f"example {i}" for i in range(8)], tokenizer, context=64)
    policy, reference = models(tokenizer, data)
    trl_policy, trl_reference = copy.deepcopy(policy), copy.deepcopy(reference)
    ours, stats, kl = prefer_step(policy, reference, data)
    with tempfile.TemporaryDirectory() as output_dir:
        theirs, metrics, trained = trl_step(trl_policy, trl_reference, tokenizer, data, output_dir)
    grads = dict(trained.named_parameters())
    gradient = max(
        (p.grad - grads[n].grad).abs().max().item() for n, p in policy.named_parameters() if p.grad is not None
    )
    pairs = {
        "loss": (ours, theirs),
        "z0": (max(0.0, kl), metrics.get("kl", float("nan"))),
        "rewards/chosen": (stats["rewards_chosen"], metrics.get("rewards/chosen", float("nan"))),
        "rewards/rejected": (stats["rewards_rejected"], metrics.get("rewards/rejected", float("nan"))),
    }
    differences = {name: abs(a - b) for name, (a, b) in pairs.items()} | {"gradient (max over parameters)": gradient}
    scale = {name: max(1.0, abs(b)) for name, (_, b) in pairs.items()}
    print(f"loss: prefer {ours:.8f}, TRL {theirs:.8f}; z0: prefer {kl:.6f} (before the clamp), TRL {metrics.get('kl')}")
    for name, value in differences.items():
        print(f"max |prefer - TRL| {name}: {value:.3e}")
    bad = [n for n, v in differences.items() if not v <= TOLERANCE * scale.get(n, 1.0)]
    print("OK" if not bad and kl > 0 else f"FAILED: {', '.join(bad) or 'z0 <= 0'} (relative tolerance {TOLERANCE:g})")
    return 1 if bad or not kl > 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
