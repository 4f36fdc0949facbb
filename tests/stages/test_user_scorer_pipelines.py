"""Users' own scorers, named by import path, drive and judge `prefer ppo`, `prefer grpo` and `prefer rlhf` as whole
commands (prefer.cli.main): the proxy reward and the gold written to samples.jsonl and metrics.jsonl are the user
functions' values on the logged samples, and the proxy reward rises; a scorer from an installed plugin package is
the reward by its entry-point name; a bad scorer stops each command with one line and exit 2, no final model."""

import json
import statistics

import pytest
from toy_scorers import not_a, spec, words_without_a

from prefer.cli import main
from prefer.data.formats import read_rankings
from prefer.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

# Both forms a user writes: a module on the Python path (tests/ is on it under pytest, as a user's package would be)
# and a file path (what a worker process or another torchrun rank resolves again by itself).
PROXY_BY_MODULE = "py:toy_scorers:not_a"
GOLD_BY_FILE = spec("words_without_a")


def _policy_gradient(command, sft, out, **extra) -> int:
    values = {
        "out_dir": out,
        "model.init_from": sft / "sft",
        "prompts": sft / "prompts.jsonl",
        "reward.scorer": PROXY_BY_MODULE,
        "reward.gold_scorer": GOLD_BY_FILE,
        "rollout.max_new_tokens": 12,
        "optimizer.lr": 3e-3,
        "train.checkpoint_every": 100,
        "runtime.progress": "false",
        **extra,
    }
    return main([command, *(f"{key}={value}" for key, value in values.items())])


# PPO: 8 prompts a batch; GRPO: 4 prompts x 4 samples. Every episode is logged (train.log_samples = the batch).
RUNS = {
    "ppo": {"train.batch_size": 8, "train.minibatch_size": 8, "train.log_samples": 8},
    "grpo": {"train.batch_size": 4, "group.size": 4, "train.minibatch_size": 16, "train.log_samples": 16},
}


@pytest.mark.parametrize("command", ["ppo", "grpo"])
def test_user_scorers_by_import_path_are_the_reward_and_the_gold_of_the_command(sft, tmp_path, command):
    out = tmp_path / "run"
    assert _policy_gradient(command, sft, out, **{"train.iterations": 12, **RUNS[command]}) == 0
    metrics = read_metrics(out)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    episodes = RUNS[command]["train.log_samples"]
    assert len(metrics) == 12 and len(rows) == 12 * episodes
    for record in metrics:
        texts = [row["prompt"] + row["response"] for row in rows if row["iteration"] == record["step"]]
        logged = [row for row in rows if row["iteration"] == record["step"]]
        assert len(texts) == episodes
        # samples.jsonl: each episode's proxy and gold are minus the user functions' misalignments of its text
        assert [row["proxy"] for row in logged] == pytest.approx([-s for s in not_a(texts)], abs=1e-6)
        assert [row["gold"] for row in logged] == pytest.approx([-s for s in words_without_a(texts)], abs=1e-6)
        # metrics.jsonl: the batch means of the same values (every episode of the batch is logged)
        assert record["reward/proxy"] == pytest.approx(-statistics.fmean(not_a(texts)), abs=1e-6)
        assert record["reward/gold"] == pytest.approx(-statistics.fmean(words_without_a(texts)), abs=1e-6)
    proxy = [record["reward/proxy"] for record in metrics]
    print(f"{command}: proxy reward by iteration {[round(p, 3) for p in proxy]}")
    assert statistics.fmean(proxy[-4:]) > statistics.fmean(proxy[:4])  # the user's reward is what it learns
    info = json.loads((out / "final" / "prefer.json").read_text())
    assert info["scorer"] == PROXY_BY_MODULE and info["gold_scorer"] == GOLD_BY_FILE


def _same_order(scores, ranks) -> bool:
    """Whether `ranks` (0 = best, equal = tie) order the responses as their misalignment `scores` do."""
    pairs = [(i, j) for i in range(len(scores)) for j in range(len(scores)) if i != j]
    return all((scores[i] < scores[j]) == (ranks[i] < ranks[j]) for i, j in pairs)


def test_prefer_rlhf_labels_and_judges_with_a_user_gold_scorer(sft, tmp_path, capsys):
    """The whole command on the tiny LM of conftest.py, every sweep cut to one short run: the synthetic labelers
    rank by the user's function, and the evaluation's gold of the SFT model's samples is that function's value."""
    out = tmp_path / "rlhf"
    gold = spec("not_a")
    values = {
        "out_dir": out,
        "task": "pii",
        "source": sft / "corpus.jsonl",
        "gold_scorer": gold,
        "init_from": sft / "sft",
        "prompt_lines": 0,
        "label_prompts": 48,
        "validation_prompts": 4,
        "rl_prompts": 8,
        "eval.prompts": 8,
        "eval.max_new_tokens": 8,
        "eval.heldout_blocks": 4,
        "best_of_n_prompts": 8,
        "label.num_responses": 3,
        "label.generation.max_new_tokens": 8,
        "label_agreement": "null",
        "sft_epochs": "[1]",
        "reward.train.epochs": 1,
        "weak_fraction": 0.5,
        "best_of_n": "[1]",
        "ppo.train.iterations": 2,
        "ppo.train.batch_size": 4,
        "ppo.train.minibatch_size": 4,
        "ppo.rollout.max_new_tokens": 8,
        "kl_coefs": "[0.05]",
        "ppo.ptx.batch_size": 4,
        "overopt_iterations": 1,
        "overopt_every": 1,
        "dpo_runs": "[]",
        "group_algorithms": "[]",
        "runtime.device": "cpu",
    }
    assert main(["rlhf", *(f"{key}={value}" for key, value in values.items())]) == 0, capsys.readouterr().err
    comparisons = read_rankings(out / "labels" / "rankings.jsonl")
    assert len(comparisons) > 0
    for comparison in comparisons:  # clean labels (label_agreement null): the user's order, ties tied
        texts = [comparison.prompt + response for response in comparison.responses]
        assert _same_order(not_a(texts), comparison.ranks), comparison
    results = json.loads((out / "results.json").read_text())
    assert results["gold_scorer"] == gold
    sft_entry = results["policies"]["sft"]
    examples = [example["prompt"] + example["response"] for example in sft_entry["examples"]]
    assert sft_entry["per_sample_gold"][: len(examples)] == pytest.approx(not_a(examples), abs=1e-6)
    assert sft_entry["gold"]["mean"] == pytest.approx(statistics.fmean(sft_entry["per_sample_gold"]), abs=1e-6)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line and not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("prefer: error: "), err
    return lines[0]


BAD = [("bad_raises", "raised ValueError: boom"), ("bad_length", "scores for"), ("bad_nan", "returned nan at index")]


@pytest.mark.parametrize("command", ["ppo", "grpo"])
@pytest.mark.parametrize(("bad", "expected"), BAD)
def test_a_bad_reward_scorer_stops_the_command_with_one_line_and_no_final_model(
    sft, tmp_path, capfd, command, bad, expected
):
    out, bad_spec = tmp_path / "run", spec(bad)
    capfd.readouterr()
    extra = {"train.iterations": 2, "reward.scorer": bad_spec, "reward.gold_scorer": "null", **RUNS[command]}
    assert _policy_gradient(command, sft, out, **extra) == 2
    line = _one_error_line(capfd.readouterr().err)
    assert f"scorer {bad_spec!r}" in line and expected in line, line
    metrics = out / "metrics.jsonl"
    assert not (out / "final").exists() and (not metrics.exists() or not metrics.read_text().strip())


@pytest.mark.parametrize(("bad", "expected"), BAD)
def test_a_bad_gold_scorer_stops_prefer_rlhf_with_one_line_before_any_stage_trains(sft, tmp_path, capfd, bad, expected):
    out, bad_spec = tmp_path / "rlhf", spec(bad)
    args = [f"out_dir={out}", f"source={sft / 'corpus.jsonl'}", f"gold_scorer={bad_spec}", f"init_from={sft / 'sft'}"]
    args += ["prompt_lines=0", "label_prompts=16", "validation_prompts=4", "rl_prompts=8", "eval.prompts=8"]
    args += ["best_of_n_prompts=8", "label.generation.max_new_tokens=8", "runtime.device=cpu"]
    capfd.readouterr()
    assert main(["rlhf", *args]) == 2
    line = _one_error_line(capfd.readouterr().err)
    assert f"scorer {bad_spec!r}" in line and expected in line, line
    assert not (out / "sft_1ep").exists() and not (out / "labels" / "rankings.jsonl").exists()


@pytest.mark.parametrize("command", ["ppo", "grpo"])
def test_an_installed_plugin_scorer_is_the_reward_by_its_entry_point_name(
    sft, tmp_path, plugin_site, monkeypatch, command
):
    """examples/prefer-example-scorer, pip-installed: `shouting` (the share of letters in upper case) by name."""
    monkeypatch.syspath_prepend(str(plugin_site))
    from prefer_example_scorer import shouting

    out = tmp_path / "run"
    extra = {"train.iterations": 2, "reward.scorer": "shouting", "reward.gold_scorer": "null", **RUNS[command]}
    assert _policy_gradient(command, sft, out, **extra) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    texts = [row["prompt"] + row["response"] for row in rows]
    assert rows and [row["proxy"] for row in rows] == pytest.approx([-s for s in shouting(texts)], abs=1e-6)
    assert json.loads((out / "final" / "prefer.json").read_text())["scorer"] == "shouting"
