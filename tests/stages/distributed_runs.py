"""Helpers of the torchrun tests (test_distributed*.py): their tiny models and inputs, `torchrun`, and the
comparisons of one process with two ranks."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import computed

from prefer.data.formats import (
    Comparison,
    Demonstration,
    write_demonstrations,
    write_jsonl,
    write_rankings,
)
from prefer.data.tokenizer import train_tokenizer
from prefer.models.build import build_model
from prefer.models.reward_model import build_reward_model
from prefer.objectives import mle_loss, next_token_targets
from prefer.training import read_metrics, save_model

WORDS = ["red", "blue", "cat", "dog", "sun", "tree", "lamp", "road", "apple", "sky"]


def write_distributed_data(root):
    """In `root`: a random tiny GPT-2 (context 32) and its BPE (lm/), a reward model on its trunk (rm/), and every
    stage's input file."""
    rng = random.Random(0)

    def phrase(low, high):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    tokenizer = train_tokenizer([phrase(2, 8) for _ in range(300)], vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    # A few steps on eos-separated phrases, so that responses end at different lengths: ranks then hold different
    # token counts, and only a global normalisation gives the single-process step.
    stream = [tokenizer.eos_token_id]
    for _ in range(600):
        stream += tokenizer.encode(" " + phrase(1, 4)) + [tokenizer.eos_token_id]
    blocks = torch.tensor(stream[: len(stream) // 32 * 32]).view(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        batch = blocks[torch.randint(len(blocks), (16,))]
        (targets,) = next_token_targets(batch)
        mle_loss(model(batch).logits[:, :-1], targets, torch.ones_like(targets, dtype=torch.bool))[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    save_model(root / "lm", model, tokenizer)
    build_reward_model(root / "lm").save(root / "rm", {})  # a random score head: varied rewards
    write_demonstrations(root / "demos.jsonl", [Demonstration(phrase(1, 2), " " + phrase(1, 5)) for _ in range(32)])
    comparisons = []
    for _ in range(24):
        k = rng.randint(2, 3)
        comparisons.append(
            Comparison(phrase(1, 2), tuple(" " + phrase(1, 4) for _ in range(k)), tuple(rng.sample(range(k), k)))
        )
    write_rankings(root / "rankings.jsonl", comparisons)
    write_jsonl(root / "prompts.jsonl", [{"prompt": word} for word in WORDS])
    write_jsonl(root / "corpus.jsonl", [{"text": phrase(3, 8) + "."} for _ in range(400)])
    return root


def torchrun(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m prefer ARGS` (or `... SCRIPT ARGS`), as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    target = [script] if script else ["-m", "prefer"]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def dotted(values: dict) -> list[str]:
    return [f"{key}={value}" for key, value in values.items()]


def comparable(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, less GPT-2's key biases: softmax ignores them, so their gradient is 0 up to rounding, which Adam
    divides by its own root mean square and turns into steps of up to lr (1e-5 apart after a few steps here)."""
    if key.endswith("attn.c_attn.bias"):
        query, _, value = tensor.chunk(3)
        return torch.cat([query, value])
    return tensor


def assert_same_weights(a: Path, b: Path, *, atol: float, name: str = "model.safetensors"):
    wa, wb = load_file(a / name), load_file(b / name)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(comparable(key, wa[key]), comparable(key, wb[key]), atol=atol, rtol=0, msg=key)


# Counts tokens where (old + clamp(v - old)) - R beats v - R: inside the clip range that is a rounding coin flip.
ROUNDING_NOISE = {"train/value/clip_fraction"}


def assert_same_metrics(a: Path, b: Path, *, atol: float):
    ma, mb = read_metrics(a), read_metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] and ma
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        ra, rb = computed(ra), computed(rb)  # wall-clock time/ keys aside
        for key, value in ra.items():
            assert key in ROUNDING_NOISE or value == pytest.approx(rb[key], abs=atol, rel=atol, nan_ok=True), (
                ra["step"],
                key,
            )


# One torchrun job runs the four 2-rank trainings one after the other (each `prefer` command as a user would run it,
# but without paying torch's and transformers' imports four times on a 2-core machine).
MANY = """
import json
import sys

from prefer.cli import main
from prefer.training import end_rank

for argv in json.loads(sys.argv[1]):
    if main(argv):
        sys.exit(2)
end_rank()  # what `prefer` does at its end; main(argv) stays in the group for the next command
"""
