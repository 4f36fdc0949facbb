"""Reward-model training on synthetic rankings whose better responses contain a word: held-out accuracy, the
bias, checkpoints, bad input."""

import json
import random

import pytest
import torch

from prefer.config import RewardConfig, load_config
from prefer.data.formats import (
    Comparison,
    Demonstration,
    write_demonstrations,
    write_rankings,
)
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.models.build import build_model
from prefer.models.reward_model import load_reward_model
from prefer.stages.reward import reward
from prefer.training import read_metrics

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "tree"]


def response(rng, polite):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
    if polite:
        words.insert(rng.randint(0, len(words)), "please")
    return " " + " ".join(words)


@pytest.fixture(scope="module")
def polite(tmp_path_factory):
    """Rankings of K = 2..4 responses where every response with "please" beats every one without (ties within)."""
    tmp = tmp_path_factory.mktemp("reward")
    rng = random.Random(0)
    comparisons, demonstrations = [], []
    for i in range(320):
        k = rng.randint(2, 4)
        flags = [True, False] + [rng.random() < 0.5 for _ in range(k - 2)]
        rng.shuffle(flags)
        responses = tuple(response(rng, flag) for flag in flags)
        comparisons.append(Comparison(f"q{i % 9}:", responses, tuple(0 if flag else 1 for flag in flags)))
        demonstrations.append(Demonstration(f"q{i % 9}:", response(rng, True)))
    write_rankings(tmp / "rankings.jsonl", comparisons)
    write_demonstrations(tmp / "demos.jsonl", demonstrations[:64])
    tokenizer = train_tokenizer([c.prompt + r for c in comparisons for r in c.responses], vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    model.save_pretrained(tmp / "init")
    tokenizer.save_pretrained(tmp / "init")
    return tmp


def overrides(data, out_dir, **extra):
    values = {
        "out_dir": out_dir,
        "data.rankings": data / "rankings.jsonl",
        "model.init_from": data / "init",
        "optimizer.lr": 2e-3,
        "train.batch_size": 8,
        "train.micro_batch_size": 4,
        "train.eval_every": 10,
        "train.checkpoint_every": 25,
        "runtime.progress": "false",
        "data.validation_fraction": 0.2,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def trained(polite, tmp_path_factory):
    """The defaults (one epoch), with the bias set from a demonstrations file."""
    out = tmp_path_factory.mktemp("run") / "rm"
    config = load_config(
        RewardConfig, overrides=overrides(polite, out, **{"data.demonstrations": polite / "demos.jsonl"})
    )
    assert config.train.epochs == 1
    return reward(config)


def test_reward_model_learns_the_preference_and_reports_heldout_accuracy(trained):
    info = json.loads((trained / "prefer.json").read_text())
    assert info["val_accuracy"] > 0.8 and info["val_pairs"] > 50
    metrics = read_metrics(trained.parent)
    accuracies = [m["val/accuracy"] for m in metrics if "val/accuracy" in m]
    assert len(accuracies) >= 3 and accuracies[-1] == pytest.approx(info["val_accuracy"])
    assert metrics[-1]["final/val_accuracy"] == pytest.approx(info["val_accuracy"])
    reward_model = load_reward_model(trained)
    polite_reward, rude_reward = reward_model.rewards([("q1:", " red please cat dog"), ("q1:", " red cat dog")])
    assert polite_reward > rude_reward


def test_bias_makes_the_demonstrations_mean_reward_zero(trained, polite):
    reward_model = load_reward_model(trained)
    pairs = [
        (json.loads(line)["prompt"], json.loads(line)["response"])
        for line in (polite / "demos.jsonl").read_text().splitlines()
    ]
    assert abs(float(reward_model.rewards(pairs).mean())) < 1e-4
    assert reward_model.bias == json.loads((trained / "prefer.json").read_text())["reward_bias"] != 0


def test_bias_defaults_to_the_best_responses_and_a_run_is_never_overwritten(polite, tmp_path):
    config = load_config(RewardConfig, overrides=overrides(polite, tmp_path / "rm", **{"train.epochs": 0.1}))
    final = reward(config)
    assert read_metrics(tmp_path / "rm")[-1]["step"] == 4  # 0.1 x 256 training prompts / 8 per step
    assert json.loads((final / "prefer.json").read_text())["bias_from"] == "best response of each ranking"
    best = [json.loads(line) for line in (polite / "rankings.jsonl").read_text().splitlines()]
    best = [
        (r["prompt"], r["responses"][r["ranking"][0] if isinstance(r["ranking"][0], int) else r["ranking"][0][0]])
        for r in best
    ]
    assert abs(float(load_reward_model(final).rewards(best).mean())) < 1e-4
    with pytest.raises(PreferError, match="already holds a run"):
        reward(config)


def test_prompt_longer_than_the_context_names_file_and_line(polite, tmp_path):
    lines = (polite / "rankings.jsonl").read_text().splitlines()
    bad = json.loads(lines[4])
    bad["prompt"] = "red blue " * 40
    lines[4] = json.dumps(bad)
    (tmp_path / "rankings.jsonl").write_text("\n".join(lines[:10]) + "\n")
    config = load_config(
        RewardConfig, overrides=overrides(polite, tmp_path / "rm", **{"data.rankings": tmp_path / "rankings.jsonl"})
    )
    with pytest.raises(PreferError, match=r"rankings\.jsonl:5: the prompt is \d+ tokens"):
        reward(config)


def test_resume_after_a_kill_gives_the_same_reward_model(trained, polite, tmp_path):
    import shutil

    from killed_runs import interrupt_at
    from safetensors.torch import load_file

    # 32 steps, checkpoints every 25: step 25 and the final step 32 are kept
    shutil.copytree(trained.parent, tmp_path / "killed")
    interrupt_at(tmp_path / "killed", 25)
    resumed = reward(
        load_config(
            RewardConfig,
            overrides=overrides(polite, tmp_path / "killed", **{"data.demonstrations": polite / "demos.jsonl"}),
        ),
        resume=True,
    )
    expected, got = load_file(trained / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert json.loads((resumed / "prefer.json").read_text())["reward_bias"] == pytest.approx(
        json.loads((trained / "prefer.json").read_text())["reward_bias"]
    )
    assert read_metrics(tmp_path / "killed") == read_metrics(trained.parent)


def test_gradient_accumulation_does_not_change_the_step(polite, tmp_path):
    """One step over 8 prompts equals 8 micro-batches of 1 prompt (K differs between prompts)."""

    def one_step(name, micro):
        return reward(
            load_config(
                RewardConfig,
                overrides=overrides(
                    polite,
                    tmp_path / name,
                    **{"train.epochs": 0.03, "train.micro_batch_size": micro, "optimizer.grad_clip": 1e9},
                ),
            )
        )

    one_step("whole", 8)
    one_step("accumulated", 1)
    # Equal losses and equal norms of the accumulated gradient (logged before clipping). Weights after the step
    # are no test: Adam's first step divides each gradient by its own magnitude, so float noise in near-zero
    # gradients becomes a visible difference.
    whole, accumulated = read_metrics(tmp_path / "whole")[0], read_metrics(tmp_path / "accumulated")[0]
    assert whole["train/loss"] == pytest.approx(accumulated["train/loss"], rel=1e-5)
    assert whole["train/grad_norm"] == pytest.approx(accumulated["train/grad_norm"], rel=1e-4)
