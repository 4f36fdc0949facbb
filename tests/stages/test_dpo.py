"""`prefer dpo`: DPO, IPO and listwise DPO on synthetic K = 4 rankings (gold scorer "not-a") raise the gold score of
the policy's samples; the reference's log-probs are computed once; accumulation does not change the step; resume is
exact; bad input is one line with exit code 2."""

import json
import shutil

import pytest
import torch
from killed_runs import interrupt_at
from safetensors.torch import load_file
from toy_rl import label_toy_prompts, mean_reward

import prefer.stages.dpo as stage
from prefer.cli import main
from prefer.config import DPO_LOSS_NAMES, DPOConfig, build_config
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.objectives import DPO_LOSSES
from prefer.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rankings(sft, tmp_path_factory):
    """K = 4 samples of the SFT model for ~180 prompts, ranked by how many of their characters are "a"."""
    root = tmp_path_factory.mktemp("dpo")
    label_toy_prompts(sft, root)
    return root / "rankings.jsonl"


def _config(sft, rankings, out, **overrides):
    values = {
        "out_dir": out,
        "data.rankings": rankings,
        "model.init_from": sft / "sft",
        "optimizer.lr": 3e-3,
        "train.batch_size": 8,
        "train.epochs": 2,
        "train.eval_every": 10,
        "train.checkpoint_every": 20,
        "eval.kl_samples": 16,
        "eval.max_new_tokens": 12,
        "runtime.progress": False,
        "runtime.device": "cpu",
        "data.validation_fraction": 0.1,
    }
    values.update(overrides)
    return build_config(DPOConfig, values)


@pytest.mark.parametrize(
    "loss,strength", [("dpo", {"dpo.beta": 0.1}), ("ipo", {"dpo.tau": 0.1}), ("listwise", {"dpo.beta": 0.1})]
)
def test_each_loss_raises_the_gold_score_and_logs_heldout_margins_and_kl(
    sft,
    rankings,
    tmp_path,
    monkeypatch,
    loss,
    strength,
):
    calls = []
    original = stage.reference_logprobs
    monkeypatch.setattr(stage, "reference_logprobs", lambda *a, **k: calls.append(1) or original(*a, **k))
    final = stage.dpo(_config(sft, rankings, tmp_path / "run", **{"dpo.loss": loss, **strength}))
    before, after = mean_reward(sft / "sft", sft), mean_reward(final, sft)
    print(f"{loss}: mean gold reward of samples: SFT {before:.3f}, after {after:.3f}")
    assert after > before + 0.05
    assert len(calls) == 2  # train and held-out rankings, once each for the whole run
    metrics = read_metrics(tmp_path / "run")
    evaluated = [m for m in metrics if "val/accuracy" in m]
    assert len(evaluated) >= 3
    assert evaluated[-1]["val/accuracy"] > 0.6 and evaluated[-1]["val/margin"] > 0 and evaluated[-1]["val/kl"] > 0
    assert metrics[0]["train/accuracy"] <= 0.5 + 1e-6  # policy = reference: every implicit margin is 0 at first
    info = json.loads((final / "prefer.json").read_text())
    assert info["stage"] == "dpo" and info["loss"] == loss and info["val_accuracy"] == evaluated[-1]["val/accuracy"]


def test_gradient_accumulation_does_not_change_the_step(sft, rankings, tmp_path):
    """One step over 8 rankings equals 8 micro-batches of 1 (K and lengths differ between prompts)."""
    for name, micro in (("whole", 8), ("accumulated", 1)):
        stage.dpo(
            _config(
                sft,
                rankings,
                tmp_path / name,
                **{
                    "train.epochs": 0.01,
                    "train.micro_batch_size": micro,
                    "optimizer.grad_clip": 1e9,
                    "dpo.loss": "listwise",
                },
            )
        )
    whole, accumulated = read_metrics(tmp_path / "whole")[0], read_metrics(tmp_path / "accumulated")[0]
    assert whole["train/loss"] == pytest.approx(accumulated["train/loss"], rel=1e-5)
    assert whole["train/grad_norm"] == pytest.approx(accumulated["train/grad_norm"], rel=1e-4)


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(sft, rankings, tmp_path, monkeypatch):
    config = _config(sft, rankings, tmp_path / "run", **{"train.epochs": 1, "model.dropout": 0.1})
    final = stage.dpo(config)  # 21 steps: checkpoints at 20 and 21
    steps = read_metrics(tmp_path / "run")[-1]["step"]
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    interrupt_at(tmp_path / "killed", 20)
    monkeypatch.setattr(stage, "reference_logprobs", lambda *a, **k: pytest.fail("recomputed the reference"))
    resumed = stage.dpo(
        _config(sft, rankings, tmp_path / "killed", **{"train.epochs": 1, "model.dropout": 0.1}), resume=True
    )
    assert steps > 20
    expected, got = load_file(final / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert read_metrics(tmp_path / "killed") == read_metrics(tmp_path / "run")


def test_bad_input_is_one_line_with_exit_code_2(sft, rankings, tmp_path, capsys):
    lines = rankings.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["responses"], bad["ranking"] = bad["responses"][:1], [0]
    (tmp_path / "k1.jsonl").write_text("\n".join([lines[0], lines[1], json.dumps(bad)]) + "\n")
    base = [f"model.init_from={sft / 'sft'}", "optimizer.lr=1e-3", f"out_dir={tmp_path / 'run'}"]
    assert main(["dpo", *base, f"data.rankings={tmp_path / 'k1.jsonl'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"prefer: error: {tmp_path / 'k1.jsonl'}:3: 1 responses; a ranking needs 2 to 9"
    other = tmp_path / "other"
    shutil.copytree(sft / "sft", other)
    train_tokenizer(["zzz qqq www"] * 20, vocab_size=320).save_pretrained(other)
    assert main(["dpo", *base, f"data.rankings={rankings}", f"model.reference={other}"]) == 2
    error = capsys.readouterr().err.strip()
    assert f"model.reference {other}: its tokenizer differs" in error and "\n" not in error
    assert main(["dpo", *base, f"data.rankings={rankings}", "dpo.loss=orpo"]) == 2
    assert "config: dpo.loss: unknown 'orpo'; choose one of dpo, ipo, listwise, kto" in capsys.readouterr().err
    with pytest.raises(PreferError, match="dpo.beta"):
        _config(sft, rankings, tmp_path / "x", **{"dpo.beta": 0.0})


def test_the_loss_table_names_exactly_the_configurable_losses():
    assert tuple(DPO_LOSSES) == DPO_LOSS_NAMES


def test_resume_after_sigkill_of_the_command_reproduces_the_uninterrupted_run(sft, rankings, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    values = {
        "data.rankings": rankings,
        "model.init_from": sft / "sft",
        "optimizer.lr": 3e-3,
        "train.batch_size": 8,
        "train.epochs": 3,
        "train.eval_every": 10,
        "train.checkpoint_every": 5,
        "eval.kl_samples": 4,
        "eval.max_new_tokens": 8,
        "runtime.progress": False,
        "runtime.device": "cpu",
    }
    args = [f"{k}={v}" for k, v in values.items()]
    whole = stage.dpo(_config(sft, rankings, tmp_path / "whole", **values))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "prefer", "dpo", *args, f"out_dir={tmp_path / 'cut'}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = tmp_path / "cut" / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (tmp_path / "cut" / "final").exists()  # killed mid-run
    assert main(["dpo", "--resume", f"out_dir={tmp_path / 'cut'}"]) == 0
    expected, got = load_file(whole / "model.safetensors"), load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "whole")
