"""Collection rounds: InstructGPT collected its comparisons in batches, later ones on samples of the policies trained
on the earlier ones (Ouyang et al. 2022, Sec. 3.2 and Appendix A). `prefer rlhf` with `collection_rounds: N` runs
round 1 as the rest of the command does (rankings of the starting model's samples -> reward model -> PPO), then for
each later round r:

    the previous round's PPO policy writes K responses to each labelling prompt, which the synthetic labelers rank
    -> a reward model on every round's training rankings so far (each round's held-out prompts stay unseen)
    -> PPO from the SFT model against it, at the KL coefficient round 1 found best
    -> the same evaluation protocol as every other policy (gold, win rate against SFT, KL)

and asks the question the rounds are for: does the new reward model judge the policy's own samples better than
round 1's did (pairwise accuracy against the gold ranking on round r's held-out prompts), and does its policy beat
round 1's on the gold judge."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefer.config import RLHFConfig
from prefer.data.formats import read_rankings, write_rankings
from prefer.experiments.rlhf_data import heldout_accuracy, heldout_split, reward_model_on, synthetic_labels
from prefer.experiments.rlhf_policies import Evaluator, headline, timed_stage
from prefer.stages.policy_gradient import ppo


def split_by_prompt(rankings: Path, heldout_prompts: set[str]) -> tuple[list, list]:
    """(training, held-out) rankings of a later round: every round labels the same prompts (with another policy's
    responses), and round 1's held-out prompts stay held out in all of them, so no reward model sees them."""
    comparisons = read_rankings(rankings)
    return (
        [c for c in comparisons if c.prompt not in heldout_prompts],
        [c for c in comparisons if c.prompt in heldout_prompts],
    )


def later_rounds(
    config: RLHFConfig,
    evaluator: Evaluator,
    out: Path,
    *,
    start: Path,
    label_prompts: Path,
    gold_name: str,
    ppo_base,
    first_policy: str,
    kl_coef: float,
    first_reward_model: Path,
) -> tuple[dict[str, dict], list[dict]]:
    """Rounds 2..collection_rounds. Returns (their policies' entries for the table, one summary per round)."""
    train, heldout = heldout_split(config, read_rankings(out / "labels" / "rankings.jsonl"))
    heldouts = {1: heldout}
    heldout_prompts = {c.prompt for c in heldout}
    reward_models = {1: first_reward_model}
    measured: dict[tuple[int, int], dict] = {}  # (held-out round, reward-model round) -> accuracy and pairs
    policy_name, policy_path = first_policy, out / first_policy / "final"
    policies: dict[str, dict] = {}
    summaries = []
    for number in range(2, config.collection_rounds + 1):
        folder = out / f"round{number}"
        labels = synthetic_labels(config, out, policy_path, label_prompts, gold=gold_name, folder=folder / "labels")
        new_train, heldouts[number] = split_by_prompt(folder / "labels" / "rankings.jsonl", heldout_prompts)
        train = train + new_train
        rankings = folder / f"rankings_train_{len(train)}.jsonl"  # its size in the name: a stage's cache key
        write_rankings(rankings, train)
        reward_models[number] = reward_model_on(config, folder / "rm", rankings, start)
        for r, held in heldouts.items():  # the pairs this round adds: its reward model, its held-out rankings
            for m, path in reward_models.items():
                if (r, m) not in measured:
                    measured[r, m] = dict(zip(("accuracy", "pairs"), heldout_accuracy(path, held)))
        accuracy = {  # every round's reward model on every round's held-out rankings so far
            f"round{r}_heldout": {f"rm_round{m}": measured[r, m] for m in reward_models} for r in heldouts
        }
        name = f"ppo_kl{kl_coef:g}_round{number}"
        final, seconds = timed_stage(
            ppo,
            replace(
                ppo_base,
                out_dir=str(folder / name),
                kl=replace(ppo_base.kl, coef=kl_coef),
                reward=replace(ppo_base.reward, model=str(reward_models[number])),
            ),
        )
        policies[name] = {
            **evaluator.evaluate(name, final),
            "kind": "ppo_round",
            "round": number,
            "kl_coef": kl_coef,
            "train_seconds": seconds,
        }
        summaries.append(
            {
                "round": number,
                "responses_from": policy_name,
                "labels": labels,
                "training_rankings": len(train),
                "reward_model_accuracy": accuracy,
                "policy": name,
            }
        )
        print(
            f"[rlhf] round {number}: {labels['comparisons']} rankings of {policy_name}'s samples; reward models on "
            f"this round's held-out: "
            + ", ".join(f"{m} {v['accuracy']:.3f}" for m, v in accuracy[f"round{number}_heldout"].items())
            + f"; {name}: {headline(policies[name])}"
        )
        policy_name, policy_path = name, final
    return policies, summaries
