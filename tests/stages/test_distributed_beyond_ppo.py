"""torchrun with 2 CPU processes (gloo) trains exactly like 1 process accumulating 2 micro-batches, for the stages
beyond PPO: DPO (DDP), GRPO with PPO-ptx (DDP) and RLOO (FSDP2), which sample the same episodes on either layout."""

import json

import pytest
from distributed_runs import MANY, assert_same_metrics, assert_same_weights, dotted, torchrun

from prefer.config import DPOConfig, PolicyGradientConfig, load_config
from prefer.stages.dpo import dpo
from prefer.stages.policy_gradient import group_rl

pytestmark = pytest.mark.usefixtures("one_thread")


def dpo_values(data):
    # 22 training rankings (K = 2..3), global batch 8 -> 3 steps; one process: 2 micro-batches of 4, two: 1 of 4 each
    return {
        "data.rankings": data / "rankings.jsonl",
        "model.init_from": data / "lm",
        "data.validation_fraction": 0.1,
        "optimizer.lr": 3e-3,
        "train.batch_size": 8,
        "train.micro_batch_size": 4,
        "train.eval_every": 1,
        "train.checkpoint_every": 2,
        "eval.kl_samples": 4,
        "eval.max_new_tokens": 6,
        "dpo.loss": "listwise",
        "runtime.progress": "false",
        "runtime.device": "cpu",
    }


def group_values(data, algorithm):
    # 4 prompts x 2 samples = 8 episodes per iteration -> 4 per rank, sampled in micro-batches of 2; minibatches of 4
    return {
        "model.init_from": data / "lm",
        "prompts": data / "prompts.jsonl",
        "reward.scorer": f"rm:{data / 'rm'}",
        "algorithm": algorithm,
        "group.size": 2,
        "train.iterations": 2,
        "train.batch_size": 4,
        "train.minibatch_size": 4,
        "train.micro_batch_size": 2,
        "train.epochs": 2 if algorithm == "grpo" else 1,
        "rollout.max_new_tokens": 8,
        "optimizer.lr": 1e-3,
        "kl.coef": 0.1,
        "kl.target": 0.01,
        "kl.horizon": 100,
        "train.checkpoint_every": 1,
        "train.log_samples": 8,
        "runtime.progress": "false",
        "runtime.device": "cpu",
        **({"ptx.coef": 0.5, "ptx.source": data / "corpus.jsonl", "ptx.batch_size": 4} if algorithm == "grpo" else {}),
    }


@pytest.fixture(scope="module")
def runs(distributed_data, tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    dpo(load_config(DPOConfig, overrides=dotted({**dpo_values(distributed_data), "out_dir": one / "dpo"})))
    for algorithm in ("grpo", "rloo"):
        group_rl(
            load_config(
                PolicyGradientConfig,
                overrides=dotted({**group_values(distributed_data, algorithm), "out_dir": one / algorithm}),
            )
        )
    commands = [
        ["dpo", *dotted({**dpo_values(distributed_data), "out_dir": two / "dpo"})],
        ["grpo", *dotted({**group_values(distributed_data, "grpo"), "out_dir": two / "grpo"})],
        ["grpo", *dotted({**group_values(distributed_data, "rloo"), "out_dir": two / "rloo"}), "runtime.parallel=fsdp"],
    ]
    (two / "many.py").write_text(MANY)
    result = torchrun(json.dumps(commands), script=str(two / "many.py"))
    assert result.returncode == 0, result.stderr[-4000:]
    return one, two


def test_dpo_on_two_ranks_equals_one_process_with_accumulation(runs):
    one, two = runs
    assert_same_weights(one / "dpo" / "final", two / "dpo" / "final", atol=1e-5)
    assert_same_metrics(one / "dpo", two / "dpo", atol=1e-5)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_critic_free_rl_on_two_ranks_samples_the_same_episodes_and_takes_the_same_steps(runs, algorithm):
    one, two = runs
    assert_same_weights(one / algorithm / "final", two / algorithm / "final", atol=1e-5)
    assert_same_metrics(one / algorithm, two / algorithm, atol=1e-4)
    samples = [
        [json.loads(line) for line in (run / algorithm / "samples.jsonl").read_text().splitlines()]
        for run in (one, two)
    ]
    assert len(samples[0]) == 16
    assert [(s["prompt"], s["response"]) for s in samples[0]] == [(s["prompt"], s["response"]) for s in samples[1]]
