"""Critic-free RL against PPO, and DPO, in one run: episodes/s of RLOO and GRPO against PPO on the same models and
batch, wall time and peak memory (resource.getrusage) of each method, each in its own fresh process so that one
method's peak is not another's.

    python bench/critic_free.py [--iterations 6] [--episodes 32] [--new-tokens 32] [--size small] [--device cpu]

Every method starts from the same randomly initialised GPT-2 (`--size`, the demo's `small` by default) with a BPE
trained on word lists, samples `--episodes` responses of up to `--new-tokens` tokens per iteration (RLOO and GRPO:
episodes / 4 prompts x 4 samples), takes minibatches of half the batch and one pass per batch, and is rewarded by
a toy scorer (the share of characters that are "a"). DPO trains one epoch on 64 rankings of K = 4 such word lists
(8 rankings per step) and measures held-out accuracy and the KL on 8 samples at the end. Episodes/s count the
whole stage call (loading, sampling, scoring, updates, checkpoints), as a user waits for it; episodes per CPU
second divide by the process's own CPU time instead, which other jobs on a shared machine do not inflate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree", "lamp", "road", "aa", "red", "sun"]


def not_a(texts):
    return [sum(c != "a" for c in t) / max(1, len(t)) for t in texts]


def _phrase(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "."


def prepare(root: Path, size: str) -> None:
    """The starting model, prompts and rankings, written once for every method."""
    import torch

    from prefer.data.formats import Comparison, write_jsonl, write_rankings
    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model
    from prefer.training import save_model

    rng = random.Random(0)
    tokenizer = train_tokenizer([_phrase(rng) for _ in range(400)], vocab_size=400)
    torch.manual_seed(0)
    model = build_model(size, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    save_model(root / "sft", model, tokenizer)
    write_jsonl(root / "prompts.jsonl", [{"prompt": w} for w in WORDS] + [{"prompt": f"the {w}"} for w in WORDS])
    comparisons = []
    for _ in range(72):
        responses = tuple(" " + _phrase(rng) for _ in range(4))
        scores = not_a(responses)
        comparisons.append(Comparison(rng.choice(WORDS), responses, tuple(sorted(scores).index(s) for s in scores)))
    write_rankings(root / "rankings.jsonl", comparisons)


def child(method: str, root: Path, args) -> dict:
    """Run one method in this (fresh) process; its wall time, episodes/s and peak resident memory."""
    from prefer import scorers
    from prefer.config import DPOConfig, PolicyGradientConfig, build_config

    scorers.SCORERS["not-a"] = not_a
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB on Linux
    common = {"out_dir": root / method, "runtime.progress": False, "runtime.device": args.device, "optimizer.lr": 1e-4}
    rl = {
        **common,
        "model.init_from": root / "sft",
        "prompts": root / "prompts.jsonl",
        "reward.scorer": "not-a",
        "train.iterations": args.iterations,
        "train.minibatch_size": args.episodes // 2,
        "rollout.max_new_tokens": args.new_tokens,
        "train.checkpoint_every": args.iterations,
        "train.log_samples": 0,
    }
    started = time.perf_counter()
    if method == "ppo":
        from prefer.stages.policy_gradient import ppo

        ppo(build_config(PolicyGradientConfig, {**rl, "train.batch_size": args.episodes, "train.epochs": 1}))
        episodes = args.iterations * args.episodes
    elif method in ("rloo", "grpo"):
        from prefer.stages.policy_gradient import group_rl

        group_rl(
            build_config(
                PolicyGradientConfig,
                {
                    **rl,
                    "algorithm": method,
                    "group.size": 4,
                    "train.batch_size": args.episodes // 4,
                    "train.epochs": 1,
                },
            )
        )
        episodes = args.iterations * args.episodes
    else:
        from prefer.stages.dpo import dpo

        dpo(
            build_config(
                DPOConfig,
                {
                    **common,
                    "data.rankings": root / "rankings.jsonl",
                    "model.init_from": root / "sft",
                    "train.batch_size": 8,
                    "data.validation_fraction": 0.1,
                    "train.eval_every": 1000,
                    "eval.kl_samples": 8,
                    "eval.max_new_tokens": args.new_tokens,
                },
            )
        )
        episodes = None
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    return {
        "method": method,
        "wall_s": wall,
        "cpu_s": cpu,
        "episodes_per_s": episodes / wall if episodes else None,
        "episodes_per_cpu_s": episodes / cpu if episodes else None,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "stage_peak_over_imports_mb": (usage.ru_maxrss - before) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per iteration (a multiple of 8)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--size", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, args.size)
        results = {}
        for method in ("ppo", "rloo", "grpo", "dpo"):
            command = [
                sys.executable,
                __file__,
                "--child",
                method,
                "--root",
                str(root),
                *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "root")),
            ]
            output = subprocess.run(
                command, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            ).stdout
            results[method] = json.loads(output.strip().splitlines()[-1])
    header = (
        "method",
        "wall s",
        "CPU s",
        "episodes/s",
        "vs PPO",
        "episodes/CPU s",
        "vs PPO",
        "peak RSS MB",
        "stage peak MB",
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    ppo = results["ppo"]
    for method, r in results.items():
        rates = [
            f"{r[key]:.2f} | {r[key] / ppo[key]:.2f}x" if r[key] else "- | -"
            for key in ("episodes_per_s", "episodes_per_cpu_s")
        ]
        print(
            f"| {method} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {rates[0]} | {rates[1]} | {r['peak_rss_mb']:.0f} | "
            f"{r['stage_peak_over_imports_mb']:.0f} |"
        )
    print(
        f"({args.iterations} iterations x {args.episodes} episodes of <= {args.new_tokens} tokens, GPT-2 "
        f"{args.size}, {args.device}, {os.cpu_count()} CPUs; DPO: 1 epoch of 64 rankings, K = 4, 8 per step; "
        "stage peak: the process's peak RSS above its peak after imports)"
    )


if __name__ == "__main__":
    main()
