"""The optimizer step does not depend on how the batch is split: accumulation 1 x 16 == 8 x 2, and two DDP
processes (torchrun, gloo on CPU) == one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny_runs import tiny_overrides

from prefer.config import PretrainConfig, load_config
from prefer.stages.pretrain import pretrain
from prefer.training import read_metrics


def weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(final / "model.safetensors")


def assert_same_run(a: Path, b: Path, *, atol: float):
    wa, wb = weights(a / "final"), weights(b / "final")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)
    la = [m["train/loss"] for m in read_metrics(a)]
    lb = [m["train/loss"] for m in read_metrics(b)]
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), atol=atol, rtol=0)


def test_gradient_accumulation_does_not_change_the_step(tmp_path, pii_corpus):
    common = {"train.tokens": 8_000, "objective.name": "ul"}  # UL: per-token scores travel too
    for name, micro in [("whole", "null"), ("accumulated", 2)]:
        config = load_config(
            PretrainConfig,
            overrides=tiny_overrides(
                str(tmp_path / name),
                str(pii_corpus),
                str(tmp_path / "cache"),
                **common,
                **{"train.micro_batch_size": micro},
            ),
        )
        pretrain(config)
    assert_same_run(tmp_path / "whole", tmp_path / "accumulated", atol=2e-5)


def test_two_processes_equal_one(tmp_path, pii_corpus):
    common = {"train.tokens": 8_000, "train.micro_batch_size": 8}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tiny_overrides(str(tmp_path / "one"), str(pii_corpus), str(tmp_path / "cache"), **common)
    subprocess.run([sys.executable, "-m", "prefer.cli", "pretrain", *one], check=True, capture_output=True, env=env)
    two = tiny_overrides(str(tmp_path / "two"), str(pii_corpus), str(tmp_path / "cache"), **common)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "prefer.cli",
            "pretrain",
            *two,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", atol=2e-5)
