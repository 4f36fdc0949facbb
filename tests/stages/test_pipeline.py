"""The whole InstructGPT pipeline on a tiny model, end to end, with a synthetic labeler standing in for humans:

    pretrained tiny GPT-2 -> `label --synthetic` (gold: the user scorer not_a, by file path; K = 4)
    -> demonstrations + rankings -> SFT -> reward model (held-out pairwise accuracy)
    -> PPO against the reward model, gold logged only

and the PPO policy's gold score on its prompts beats the SFT model's (same prompts, same sampling seed)."""

import itertools
import json

import pytest
from toy_rl import WORDS, mean_reward, toy_label_config
from toy_scorers import spec

from prefer.config import PolicyGradientConfig, RewardConfig, SFTConfig, build_config
from prefer.labeling import label_synthetic
from prefer.stages.policy_gradient import ppo
from prefer.stages.reward import reward
from prefer.stages.sft import sft as run_sft
from prefer.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
NOT_A = spec("not_a")  # the gold scorer, named as a user names their own


def _write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


@pytest.fixture(scope="module")
def pipeline(sft, tmp_path_factory):  # `sft` is the tiny LM of conftest.py
    """Run every stage once; `sft / "sft"` is the PRETRAINED model here (the starting point of the pipeline)."""
    root = tmp_path_factory.mktemp("pipeline")
    # ~500 label prompts (every word, every pair, every 7th triple of words); PPO and the gold comparison use 26
    # others. Fewer (~180) leave the reward model near chance for some seeds.
    label_prompts = WORDS + [
        " ".join(words) for n in (2, 3) for words in list(itertools.product(WORDS, repeat=n))[:: 1 if n == 2 else 7]
    ]
    ppo_prompts = [f"the {w}" for w in WORDS] + [f"my {w}" for w in WORDS]
    _write_prompts(root / "label_prompts.jsonl", label_prompts)
    (root / "ppo").mkdir()
    _write_prompts(root / "ppo" / "prompts.jsonl", ppo_prompts)  # where mean_reward looks for prompts

    report = label_synthetic(toy_label_config(sft, root / "label_prompts.jsonl", root, scorer=NOT_A), progress=False)

    common = {
        "train.batch_size": 16,
        "schedule.warmup_fraction": 0.05,
        "train.eval_every": 10,
        "train.checkpoint_every": 1000,
        "runtime.progress": False,
        "runtime.device": "cpu",
    }
    sft_dir = run_sft(
        build_config(
            SFTConfig,
            {
                **common,
                "out_dir": root / "sft",
                "data.demonstrations": root / "demos.jsonl",
                "train.epochs": 2,
                "model.init_from": sft / "sft",
                "optimizer.lr": 1e-3,
            },
        )
    )
    rm_dir = reward(
        build_config(
            RewardConfig,
            {
                **common,
                "out_dir": root / "rm",
                "data.rankings": root / "rankings.jsonl",
                "data.demonstrations": root / "demos.jsonl",
                "train.epochs": 3,
                "data.validation_fraction": 0.15,
                "model.init_from": sft_dir,
                "optimizer.lr": 2e-3,
                "train.batch_size": 8,
            },
        )
    )
    ppo_dir = ppo(
        build_config(
            PolicyGradientConfig,
            {
                "out_dir": root / "ppo_run",
                "model.init_from": sft_dir,
                "prompts": root / "ppo" / "prompts.jsonl",
                "reward.model": rm_dir,
                "reward.gold_scorer": NOT_A,
                "train.iterations": 30,
                "train.batch_size": 16,
                "train.minibatch_size": 8,
                "train.epochs": 2,
                "rollout.max_new_tokens": 12,
                "optimizer.lr": 1e-3,
                "kl.coef": 0.05,
                "train.checkpoint_every": 1000,
                "runtime.progress": False,
                "runtime.device": "cpu",
                "train.log_samples": 2,
            },
        )
    )
    return {"root": root, "report": report, "sft": sft_dir, "rm": rm_dir, "ppo": ppo_dir}


def test_labels_sft_reward_model_and_ppo_improve_the_gold_score(pipeline):
    root = pipeline["root"]
    report = pipeline["report"]
    assert report.comparisons > 400 and report.gold_best_mean < report.gold_mean  # best-of-4 beats the average

    rm_info = json.loads((pipeline["rm"] / "prefer.json").read_text())
    print(f"reward model: held-out pairwise accuracy {rm_info['val_accuracy']:.3f} on {rm_info['val_pairs']:.0f} pairs")
    assert rm_info["val_accuracy"] > 0.7 and rm_info["val_pairs"] >= 200  # ~0.9 over seeds 0-2

    # Gold reward (-fraction of characters that are not "a") of samples on the PPO prompts, same seed for both.
    sft_gold, ppo_gold = mean_reward(pipeline["sft"], root / "ppo"), mean_reward(pipeline["ppo"], root / "ppo")
    print(f"gold reward on the PPO prompts: SFT {sft_gold:.3f}, PPO {ppo_gold:.3f}")
    assert ppo_gold > sft_gold + 0.05  # +0.15 to +0.19 over seeds 0-2

    metrics = read_metrics(root / "ppo_run")
    assert len(metrics) == 30
    assert all("reward/gold" in m and "reward/proxy" in m for m in metrics)  # proxy = the RM, gold logged only
    assert metrics[-1]["reward/proxy"] > metrics[0]["reward/proxy"]
    info = json.loads((pipeline["ppo"] / "prefer.json").read_text())
    assert info["scorer"] == f"rm:{pipeline['rm']}" and info["gold_scorer"] == NOT_A
