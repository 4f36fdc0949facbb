"""torchrun with 2 CPU processes (gloo) trains exactly like 1 process accumulating 2 micro-batches: SFT with FSDP2
(whose sharded checkpoint also resumes exactly), the reward model with DDP, PPO(-ptx) with both, sampling the same
episodes. An error on one rank fails the job naming that rank. (Pretraining with DDP: test_invariances.py.)"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from distributed_runs import MANY, assert_same_metrics, assert_same_weights, dotted, torchrun
from transformers import AutoModelForCausalLM

from prefer.config import PolicyGradientConfig, RewardConfig, SFTConfig, load_config
from prefer.stages.policy_gradient import ppo
from prefer.stages.reward import reward
from prefer.stages.sft import sft
from prefer.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the runs: 1 process x 2 micro-batches, 2 ranks x 1


def sft_values(data):
    # 29 training examples, global batch 8 -> 4 steps; one process: 2 micro-batches of 4, two: 1 of 4 each
    return {
        "data.demonstrations": data / "demos.jsonl",
        "model.init_from": data / "lm",
        "train.epochs": 1,
        "data.validation_fraction": 0.1,
        "optimizer.lr": 3e-3,
        "train.batch_size": 8,
        "train.micro_batch_size": 4,
        "train.checkpoint_every": 2,
        "train.eval_every": 2,
        "runtime.progress": "false",
        "runtime.device": "cpu",
    }


def reward_values(data):
    return {
        "data.rankings": data / "rankings.jsonl",
        "model.init_from": data / "lm",
        "data.validation_fraction": 0.1,
        "optimizer.lr": 3e-3,
        "train.batch_size": 8,
        "train.micro_batch_size": 4,
        "train.eval_every": 1,
        "runtime.progress": "false",
        "runtime.device": "cpu",
    }


def ppo_values(data):
    # global batch 8 -> 4 episodes per rank, sampled in micro-batches of 2; minibatches of 4 -> 2 per rank
    return {
        "model.init_from": data / "lm",
        "prompts": data / "prompts.jsonl",
        "reward.scorer": f"rm:{data / 'rm'}",
        "reward.model": data / "rm",
        "train.iterations": 2,
        "train.batch_size": 8,
        "train.minibatch_size": 4,
        "train.micro_batch_size": 2,
        "train.epochs": 2,
        "rollout.max_new_tokens": 8,
        "optimizer.lr": 1e-3,
        "kl.coef": 0.1,
        "kl.target": 0.01,
        "kl.horizon": 100,
        "ptx.coef": 0.5,
        "ptx.source": data / "corpus.jsonl",
        "ptx.batch_size": 4,
        "train.checkpoint_every": 1,
        "train.log_samples": 8,
        "runtime.progress": "false",
        "runtime.device": "cpu",
    }


@pytest.fixture(scope="module")
def one(distributed_data, tmp_path_factory):
    """Each stage in this process."""
    out = tmp_path_factory.mktemp("one")
    sft(load_config(SFTConfig, overrides=dotted({**sft_values(distributed_data), "out_dir": out / "sft"})))
    reward(load_config(RewardConfig, overrides=dotted({**reward_values(distributed_data), "out_dir": out / "reward"})))
    ppo(load_config(PolicyGradientConfig, overrides=dotted({**ppo_values(distributed_data), "out_dir": out / "ppo"})))
    return out


@pytest.fixture(scope="module")
def two(distributed_data, tmp_path_factory):
    """SFT with FSDP2, the reward model with DDP, PPO with DDP and with FSDP2, on 2 ranks; its stdout."""
    out = tmp_path_factory.mktemp("two")
    commands = [
        ["sft", *dotted({**sft_values(distributed_data), "out_dir": out / "sft"}), "runtime.parallel=fsdp"],
        ["reward", *dotted({**reward_values(distributed_data), "out_dir": out / "reward"})],
        ["ppo", *dotted({**ppo_values(distributed_data), "out_dir": out / "ppo"})],
        ["ppo", *dotted({**ppo_values(distributed_data), "out_dir": out / "ppo_fsdp"}), "runtime.parallel=fsdp"],
    ]
    (out / "many.py").write_text(MANY)
    result = torchrun(json.dumps(commands), script=str(out / "many.py"))
    assert result.returncode == 0, result.stderr[-4000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out


# ---------------------------------------------------------------- SFT (FSDP2)


def test_sft_with_fsdp2_equals_one_process_and_writes_a_consolidated_model(one, two):
    assert_same_weights(one / "sft" / "final", two / "sft" / "final", atol=1e-5)
    assert_same_metrics(one / "sft", two / "sft", atol=1e-5)
    assert len(read_metrics(two / "sft")) == 4
    model = AutoModelForCausalLM.from_pretrained(two / "sft" / "final")  # a plain HF directory
    torch.testing.assert_close(model.lm_head.weight, model.transformer.wte.weight)  # tied, as it was saved
    stdout = (two / "stdout.txt").read_text()
    assert stdout.count("[sft] done") == 1 and stdout.count("[reward] done") == 1  # rank 0 alone reports
    # each rank's optimizer shard went through torch.distributed.checkpoint, every rank's RNG into trainer_state
    checkpoint = two / "sft" / "checkpoints" / "step_00000004"
    assert (checkpoint / "optimizer" / ".metadata").is_file()
    assert len(list((checkpoint / "optimizer").glob("*.distcp"))) == 2
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert state["optimizer"] is None and len(state["rng_ranks"]) == 2


def test_fsdp2_run_resumed_on_two_ranks_from_its_sharded_checkpoint_ends_where_the_whole_run_ends(two, tmp_path):
    whole, cut = two / "sft", tmp_path / "cut"
    # Interrupted after step 2: the later checkpoint and the final model never happened.
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step_00000004")
    (cut / "checkpoints" / "latest").write_text("step_00000002\n")
    (cut / "config.yaml").write_text((cut / "config.yaml").read_text().replace(str(whole), str(cut)))
    result = torchrun("sft", "--resume", f"out_dir={cut}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_weights(whole / "final", cut / "final", atol=1e-6)
    assert_same_metrics(whole, cut, atol=1e-6)


# ---------------------------------------------------------------- reward model (DDP)


def test_reward_model_on_two_ranks_equals_one_process_with_accumulation(one, two):
    assert_same_weights(one / "reward" / "final", two / "reward" / "final", atol=1e-5)
    assert_same_metrics(one / "reward", two / "reward", atol=1e-5)
    infos = [json.loads((run / "reward" / "final" / "prefer.json").read_text()) for run in (one, two)]
    assert infos[0]["reward_bias"] == pytest.approx(infos[1]["reward_bias"], abs=1e-5)
    assert infos[0]["val_accuracy"] == infos[1]["val_accuracy"]


# ---------------------------------------------------------------- PPO-ptx (DDP and FSDP2)


@pytest.mark.parametrize("run", ["ppo", "ppo_fsdp"])
def test_ppo_on_two_ranks_samples_the_same_episodes_and_takes_the_same_steps(one, two, run):
    assert_same_weights(one / "ppo" / "final", two / run / "final", atol=1e-5)
    checkpoint = Path("checkpoints") / "step_00000002" / "model"
    assert_same_weights(one / "ppo" / checkpoint, two / run / checkpoint, atol=1e-5, name="value_model.safetensors")
    # reward, KL, adaptive beta, losses: of the global batch. Clipped steps of norm 1 carry the weights' 1e-6
    # differences into the second iteration's log-prob ratios, hence 1e-4 there.
    assert_same_metrics(one / "ppo", two / run, atol=1e-4)
    samples = [
        [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]
        for path in (one / "ppo", two / run)
    ]
    assert len(samples[0]) == 16  # 8 per iteration: both ranks' episodes
    assert [(s["prompt"], s["response"]) for s in samples[0]] == [(s["prompt"], s["response"]) for s in samples[1]]
    metrics = read_metrics(two / run)
    assert metrics[1]["kl_coef"] != metrics[0]["kl_coef"] and "train/ptx/loss" in metrics[0]
    assert 0 < metrics[0]["response/stopped"] < 1  # responses of several lengths: ranks hold unequal token counts


# ---------------------------------------------------------------- failures

FAILING = """
import os
import sys

import prefer.stages.sft as stage
from prefer.cli import main
from prefer.errors import PreferError


def broken(path):
    raise PreferError(f"{path}:3: only rank 1 reads this line")


if os.environ["RANK"] == "1":
    stage.read_demonstrations = broken
sys.exit(main(sys.argv[1:]))
"""


def test_an_error_on_one_rank_fails_the_job_with_that_ranks_message(distributed_data, tmp_path):
    (tmp_path / "failing.py").write_text(FAILING)
    result = torchrun(
        "sft",
        *dotted({**sft_values(distributed_data), "out_dir": tmp_path / "run"}),
        script=str(tmp_path / "failing.py"),
    )
    assert result.returncode != 0  # rank 0, waiting for rank 1 in a collective, is stopped by torchrun
    assert (
        f"prefer: error (rank 1 of 2): {distributed_data / 'demos.jsonl'}:3: only rank 1 reads this line"
        in result.stderr
    )
    assert "exitcode  : 2" in result.stderr
    assert not (tmp_path / "run" / "final").exists()
