"""`prefer grpo` (= `prefer ppo algorithm=grpo`; algorithm=rloo): critic-free RL raises the toy reward and the gold
score, no value model is built, accumulation does not change the step, resume after SIGKILL is exact, bad input is
one line."""

import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import computed
from toy_rl import hand_made_rollout, mean_reward
from toy_scorers import spec

import prefer.rl.algorithms as stage
from prefer.cli import main
from prefer.config import PolicyGradientConfig, build_config
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.rl import group_advantages, group_backward
from prefer.stages.policy_gradient import group_rl
from prefer.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
NOT_A = spec("not_a")  # the toy reward, named as a user names their own scorer
GOLD = spec("words_without_a")


def _config(sft, out, **overrides):  # noqa: F811
    values = {
        "out_dir": out,
        "algorithm": "grpo",
        "model.init_from": sft / "sft",
        "prompts": sft / "prompts.jsonl",
        "reward.scorer": NOT_A,
        "reward.gold_scorer": GOLD,  # not the proxy: an independent judge (not_a is the reward)
        "train.iterations": 30,
        "train.batch_size": 4,
        "group.size": 4,
        "train.minibatch_size": 8,
        "rollout.max_new_tokens": 12,
        "optimizer.lr": 3e-3,
        "kl.coef": 0.02,
        "train.checkpoint_every": 10,
        "runtime.progress": False,
        "train.log_samples": 2,
    }
    values.update(overrides)
    return build_config(PolicyGradientConfig, values)


@pytest.mark.parametrize("algorithm,epochs", [("grpo", 2), ("rloo", 1)])
def test_critic_free_rl_raises_the_gold_score_without_a_value_model(sft, tmp_path, monkeypatch, algorithm, epochs):  # noqa: F811
    built = []
    monkeypatch.setattr("prefer.models.value.ValueModel.__init__", lambda *a, **k: built.append(1))
    final = group_rl(_config(sft, tmp_path / "run", **{"algorithm": algorithm, "train.epochs": epochs}))
    assert not built  # no critic anywhere
    before, after = mean_reward(sft / "sft", sft), mean_reward(final, sft)
    print(f"{algorithm}: mean gold reward of samples: SFT {before:.3f}, after {after:.3f}")
    assert after > before + 0.05
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == 30 and abs(metrics[0]["kl"]) < 1e-4
    # mean gold of the first and last 5 iterations (one batch of 16 is noisy: RLOO's off-policy second minibatch is
    # ratio-corrected now, and seed 0's last batch alone dips below its first while the policy improves)
    gold = [m["reward/gold"] for m in metrics]
    assert sum(gold[-5:]) > sum(gold[:5]) and metrics[-1]["kl"] > 0
    for key in (
        "reward/proxy",
        "reward/group_std",
        "kl_coef",
        "entropy",
        "response/length",
        "train/policy/loss",
        "train/grad_norm",
        "episodes",
    ):
        assert key in metrics[-1], key
    assert metrics[-1]["episodes"] == 30 * 4 * 4
    assert json.loads((final / "prefer.json").read_text())["stage"] == algorithm


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_one_minibatch_of_8_equals_8_micro_batches_of_1(sft, algorithm):  # noqa: F811
    rollout, (policy, _, _), _, _ = hand_made_rollout(sft)
    config = _config(sft, "unused", **{"algorithm": algorithm, "group.size": 4})
    rollout, _ = group_advantages(rollout, algorithm=algorithm, group_size=4, kl_coef=0.1, group=config.group)
    grads, stats = [], []
    for micro in (8, 1):
        p = copy.deepcopy(policy)
        stats.append(
            group_backward(
                p,
                rollout,
                algorithm=algorithm,
                group=config.group,
                kl_coef=0.1,
                micro_batch_size=micro,
                temperature=1.0,
                device=torch.device("cpu"),
                precision="fp32",
            )
        )
        grads.append([param.grad.clone() for param in p.parameters() if param.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert stats[0]["policy/loss"] == pytest.approx(stats[1]["policy/loss"], rel=1e-5, abs=1e-7)


def test_group_advantages_use_each_prompts_own_group(sft):  # noqa: F811
    rollout, _, _, _ = hand_made_rollout(sft)  # rewards 1..8, policy = reference: no KL
    config = _config(sft, "unused", **{"algorithm": "rloo"})
    out, _ = group_advantages(rollout, algorithm="rloo", group_size=4, kl_coef=0.5, group=config.group)
    # groups [1, 2, 3, 4] and [5, 6, 7, 8]: leave-one-out advantages 4/3 (r - 2.5) and 4/3 (r - 6.5)
    expected = torch.tensor([-2.0, -2 / 3, 2 / 3, 2.0] * 2)
    torch.testing.assert_close(out.advantages[:, 0], expected, atol=1e-5, rtol=0)
    assert (out.advantages[~out.response_mask] == 0).all()


def test_bad_input_is_one_line_with_exit_code_2(sft, tmp_path, capsys):  # noqa: F811
    args = [
        f"model.init_from={sft / 'sft'}",
        f"prompts={sft / 'prompts.jsonl'}",
        f"reward.scorer={NOT_A}",
        f"out_dir={tmp_path / 'run'}",
    ]
    assert main(["grpo", *args, "algorithm=sarsa"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("prefer: error: config: algorithm: unknown 'sarsa'") and "\n" not in error
    import shutil

    other = tmp_path / "other"
    shutil.copytree(sft / "sft", other)
    train_tokenizer(["zzz qqq www"] * 20, vocab_size=320).save_pretrained(other)
    assert main(["grpo", *args, f"model.reference={other}"]) == 2
    error = capsys.readouterr().err.strip()
    assert f"reference {other}: its tokenizer differs" in error and "\n" not in error
    with pytest.raises(PreferError, match="group.size"):
        _config(sft, tmp_path / "x", **{"group.size": 1})


def test_the_stage_table_names_exactly_the_configurable_algorithms():
    from prefer.config import GROUP_ALGORITHMS, POLICY_GRADIENT_ALGORITHMS

    assert tuple(name for name, row in stage.ALGORITHMS.items() if not row.critic) == GROUP_ALGORITHMS
    assert tuple(stage.GROUP_RULES) == GROUP_ALGORITHMS
    assert tuple(stage.ALGORITHMS) == POLICY_GRADIENT_ALGORITHMS


def test_resume_after_sigkill_of_the_command_reproduces_the_uninterrupted_run(sft, tmp_path):  # noqa: F811
    import os
    import signal
    import subprocess
    import sys
    import time

    values = {
        "algorithm": "grpo",
        "model.init_from": sft / "sft",
        "prompts": sft / "prompts.jsonl",
        "reward.scorer": NOT_A,  # a file path: the command's process imports it again
        "train.iterations": 12,
        "train.batch_size": 4,
        "group.size": 4,
        "train.minibatch_size": 8,
        "train.epochs": 2,
        "rollout.max_new_tokens": 12,
        "optimizer.lr": 3e-3,
        "kl.coef": 0.02,
        "kl.target": 1.0,
        "train.checkpoint_every": 3,
        "runtime.progress": False,
        "train.log_samples": 2,
    }
    whole = group_rl(build_config(PolicyGradientConfig, {**values, "out_dir": tmp_path / "whole"}))
    command = [sys.executable, "-m", "prefer", "grpo"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [*command, *(f"{k}={v}" for k, v in values.items()), f"out_dir={tmp_path / 'cut'}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    latest = tmp_path / "cut" / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert not (tmp_path / "cut" / "final").exists()  # killed mid-run
    resumed = subprocess.run(
        [*command, "--resume", f"out_dir={tmp_path / 'cut'}"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = load_file(whole / "model.safetensors"), load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert all(torch.allclose(expected[key], got[key], atol=1e-6) for key in expected)
    for a, b in zip(read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut"), strict=True):
        assert a.keys() == b.keys()
        a, b = computed(a), computed(b)  # wall-clock time/ keys aside
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    samples = [(tmp_path / run / "samples.jsonl").read_text() for run in ("whole", "cut")]
    assert samples[0] == samples[1]


def test_rloo_is_on_policy_only_in_the_first_step_of_a_batch(sft, tmp_path, monkeypatch):  # noqa: F811
    """16 episodes in minibatches of 8: per iteration the first step sees the sampling policy (plain REINFORCE), the
    second an updated one, whose loss gets the sampling log-probs for the clipped sequence ratio."""
    seen = []
    rule = stage.GROUP_RULES["rloo"]

    def spy(part, logprobs, **kwargs):
        seen.append(kwargs["on_policy"])
        return rule.loss(part, logprobs, **kwargs)

    monkeypatch.setitem(stage.GROUP_RULES, "rloo", rule._replace(loss=spy))
    group_rl(_config(sft, tmp_path / "run", **{"algorithm": "rloo", "train.iterations": 2}))
    assert seen == [True, False, True, False]
    assert "train/policy/clip_fraction" in read_metrics(tmp_path / "run")[-1]


def test_a_scorer_callable_from_python_needs_no_registered_name(sft, tmp_path):  # noqa: F811
    """The Python API: GRPO against a callable (not in the scorer table), judged by another callable."""
    from toy_scorers import words_without_a

    calls = []

    def fewer_a_is_worse(texts):
        calls.append(len(texts))
        return [sum(c != "a" for c in t) / max(1, len(t)) for t in texts]

    config = _config(sft, tmp_path / "run", **{"train.iterations": 2, "reward.scorer": "my-scorer"})
    config = replace(config, reward=replace(config.reward, gold_scorer="my-gold"))
    group_rl(config, scorer=fewer_a_is_worse, gold_scorer=words_without_a)
    assert calls == [16, 16]  # 4 prompts x 4 samples, each iteration
    metrics = read_metrics(tmp_path / "run")
    assert all("reward/gold" in m for m in metrics)
    assert json.loads((tmp_path / "run" / "final" / "prefer.json").read_text())["scorer"] == "my-scorer"


def test_grpo_with_one_step_per_batch_takes_the_old_logprobs_from_the_update(sft, tmp_path, monkeypatch):  # noqa: F811
    """16 episodes in one minibatch: the rollout skips the policy's no-grad forward (as TRL's GRPO does) and the
    update's forward gives the old log-probs, the logged KL and the entropy. The run equals one whose rollout computes
    them (the ratio is exactly 1 either way); RLOO, whose rewards read them, keeps the rollout's forward."""
    import prefer.rl.episodes as episodes

    asked = []
    make_rollout = episodes.make_rollout
    monkeypatch.setattr(
        episodes, "make_rollout", lambda *a, **k: asked.append(k["policy_logprobs"]) or make_rollout(*a, **k)
    )
    overrides = {"train.iterations": 3, "train.minibatch_size": 16, "train.checkpoint_every": 3}
    skipped = group_rl(_config(sft, tmp_path / "skipped", **overrides))
    assert asked == [False] * 3
    asked.clear()
    with monkeypatch.context() as patched:  # the same run with the rollout's forward: GRPO as if its rewards read it
        patched.setitem(stage.ALGORITHMS, "grpo", stage.ALGORITHMS["grpo"]._replace(rewards_read_logprobs=True))
        computed_run = group_rl(_config(sft, tmp_path / "computed", **overrides))
    assert asked == [True] * 3
    asked.clear()
    group_rl(_config(sft, tmp_path / "rloo", **overrides, algorithm="rloo"))
    assert asked == [True] * 3
    weights = [load_file(run / "model.safetensors") for run in (skipped, computed_run)]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], atol=1e-6, rtol=1e-5)
    for a, b in zip(read_metrics(tmp_path / "skipped"), read_metrics(tmp_path / "computed"), strict=True):
        a, b = computed(a), computed(b)
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6) for k in a), (a, b)
        assert a["kl"] == a["kl"] and a["entropy"] > 0  # filled in, not NaN
