"""Reward-model scoring and the labeling app's generation at 135M parameters (issue 26): responses per second.

1. Scoring: a reward model whose trunk is SmolLM2-135M-Instruct (`prefer.models.reward_model.build_reward_model`;
   its head is untrained, which changes no timing) scores `--items` (prompt, response) pairs as PPO, best-of-n and
   the `rm:` scorer do: the chat prompt rendered with the model's template, then a response of 4-64 words. Two ways
   of batching the same pairs, alternating and flipping order every pair of runs:
     arrival: batches in the order the pairs come (what `RewardModel.rewards_of_ids` did before), each batch
              right-padded to its longest sequence;
     prefer:  `RewardModel.rewards_of_ids` as it is now (batches of similar length: sorted, scored, put back).
   Printed: responses/s (min and median of `--repeats`), the padding each way computes (padded tokens / real
   tokens), and the largest difference between the two ways' rewards.
2. Generation (`--generation`): the labeling app's job (`prefer.labeling.app_sampler.sample_batch`, the code the
   app's background thread runs) on SmolLM2 itself: `--gen-prompts` chat prompts x 2 responses of at most
   `--gen-tokens` tokens, temperature 1: responses/s and generated tokens/s.

    OMP_NUM_THREADS=2 python bench/rm_scoring_real.py [--items 256] [--batch 32] [--repeats 3] [--generation]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

import torch

from prefer.encoding import render_generation_prompt
from prefer.models.reward_model import build_reward_model, right_pad

MODEL = "smollm2-135m-instruct"
WORDS = (
    "the sea river mountain quiet bright morning evening garden city road light stone wind small green old new "
    "walks sings reads writes builds finds keeps opens carries remembers under over beside through after before"
).split()
TOPICS = ["the sea", "a city at night", "an old garden", "the mountains", "a long road", "the morning", "a library"]


def pairs(tokenizer, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(rendered chat prompt, response of 4-64 words): the lengths a 48-64-token RL rollout gives."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        messages = [{"role": "user", "content": f"Write a short paragraph about {rng.choice(TOPICS)}."}]
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 64))).capitalize() + "."
        out.append((render_generation_prompt(tokenizer, messages), " " + response))
    return out


@torch.no_grad()
def arrival_order_rewards(reward_model, encoded: list[list[int]], batch_size: int) -> torch.Tensor:
    """The baseline: batches in the order given, each right-padded to its own longest sequence."""
    reward_model.eval()
    results = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = right_pad(encoded[start : start + batch_size], reward_model.tokenizer.pad_token_id)
        results.append(reward_model(ids, mask))
    return torch.cat(results)


def padded_tokens(encoded: list[list[int]], batch_size: int) -> int:
    return sum(
        len(part) * max(map(len, part))
        for part in (encoded[start : start + batch_size] for start in range(0, len(encoded), batch_size))
    )


def scoring(args) -> None:
    reward_model = build_reward_model(MODEL)
    encoded = reward_model.encode(pairs(reward_model.tokenizer, args.items))
    real = sum(map(len, encoded))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    ways = {
        "arrival": lambda: arrival_order_rewards(reward_model, encoded, args.batch),
        "prefer": lambda: reward_model.rewards_of_ids(encoded, batch_size=args.batch),
    }
    results = {name: way() for name, way in ways.items()}  # warm-up, and the rewards compared
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(args.repeats):
        for name in ways if repeat % 2 == 0 else reversed(ways):
            started = time.perf_counter()
            ways[name]()
            seconds[name].append(time.perf_counter() - started)
    padding = {
        "arrival": padded_tokens(encoded, args.batch) / real,
        "prefer": padded_tokens([encoded[i] for i in order], args.batch) / real,
    }
    print(
        f"\nscoring {args.items} (prompt, response) pairs, {min(map(len, encoded))}-{max(map(len, encoded))} tokens "
        f"({real / len(encoded):.1f} on average), batch {args.batch}, {args.repeats} alternating repeats"
    )
    print("| batching | responses/s (min time) | responses/s (median time) | padded / real tokens |")
    print("| --- | --- | --- | --- |")
    for name in ways:
        print(
            f"| {name} | {args.items / min(seconds[name]):.1f} | {args.items / statistics.median(seconds[name]):.1f} "
            f"| {padding[name]:.2f} |"
        )
    ratio_min = min(seconds["arrival"]) / min(seconds["prefer"])
    ratio_median = statistics.median(seconds["arrival"]) / statistics.median(seconds["prefer"])
    difference = (results["arrival"] - results["prefer"]).abs().max().item()
    print(f"prefer / arrival: {ratio_min:.2f}x (mins), {ratio_median:.2f}x (medians); max |reward difference| ", end="")
    print(f"{difference:.2e}")


def generation(args) -> None:
    from prefer.labeling import app_sampler

    model, tokenizer = app_sampler.load(MODEL, "cpu")
    rng = random.Random(1)
    prompts = [f"Write a short paragraph about {rng.choice(TOPICS)}." for _ in range(args.gen_prompts)]
    settings = {"num_responses": 2, "max_new_tokens": args.gen_tokens, "temperature": 1.0, "top_p": 1.0,
                "block": "none"}  # fmt: skip
    started = time.perf_counter()
    samples, _ = app_sampler.sample_batch(model, tokenizer, prompts, settings, seed=0)
    elapsed = time.perf_counter() - started
    responses = [text for group in samples for text in group]
    tokens = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in responses)
    print(
        f"\nlabeling-app generation (app_sampler.sample_batch): {len(prompts)} prompts x 2 responses, <= "
        f"{args.gen_tokens} new tokens: {elapsed:.1f} s, {len(responses) / elapsed:.2f} responses/s, "
        f"{tokens / elapsed:.1f} generated tokens/s ({tokens / len(responses):.1f} tokens per response)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generation", action="store_true", help="also time the labeling app's generation")
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=64)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average at start "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    scoring(args)
    if args.generation:
        generation(args)
    print("load average at the end " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
