"""The RL loop's scoring forward on SmolLM2-135M-Instruct: logits at every position then sliced (what
`prefer.rl.rollout.policy_logits` did before) against the head on the response's columns only
(`prefer.models.value.response_logits`, `logits_to_keep = R + 1`), the log-probs of the response tokens from each.

    OMP_NUM_THREADS=2 python bench/response_logits_real.py [--batch 16] [--prompts 40,256] [--response 64]
                                                            [--repeats 3]

Per prompt length: `--repeats` alternating pairs (the order flipping every pair) of one no-grad forward of `--batch`
left-padded prompts and right-padded responses of random ids, then `token_logprobs` on the [B, R, V] logits (the
old log-probs and the reference's of a rollout are exactly this). Printed: seconds per forward (min, median) of each,
the ratio full/kept (> 1: kept faster), the logits' size each holds ([B, Q + R, V] against [B, R + 1, V], float32),
and the largest difference of the log-probs (the two agree up to the rounding of a matrix product of another shape).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from prefer.models.build import load_checkpoint
from prefer.models.sources import resolve_model_path
from prefer.models.value import response_logits, sequence_inputs
from prefer.objectives import token_logprobs

MODEL = "smollm2-135m-instruct"


def full_logits(model, query, query_mask, response, response_mask):
    """The previous path: every position's logits, then the response's columns."""
    ids, attention, positions = sequence_inputs(query, query_mask, response, response_mask)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    return logits[:, query.shape[1] - 1 : -1]


def episodes(vocab: int, batch: int, prompt: int, response: int):
    generator = torch.Generator().manual_seed(prompt)
    query = torch.randint(10, vocab, (batch, prompt), generator=generator)
    reply = torch.randint(10, vocab, (batch, response), generator=generator)
    query_mask = torch.arange(prompt)[None, :] >= torch.randint(0, prompt // 4, (batch,), generator=generator)[:, None]
    response_mask = torch.arange(response)[None, :] < torch.randint(response // 2, response + 1, (batch,))[:, None]
    return query, query_mask, reply, response_mask


def timed(function, model, inputs) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        started = time.perf_counter()
        logprobs = token_logprobs(function(model, *inputs).float(), inputs[2], temperature=1.0)
        return time.perf_counter() - started, logprobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompts", default="40,256", help="comma-separated prompt lengths (tokens)")
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, _, _ = load_checkpoint(resolve_model_path(MODEL), torch.device("cpu"))
    model.eval()
    vocab = model.config.vocab_size
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average at start "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(
        "| prompt tokens | full: s / forward (min, median) | kept | full / kept (min, median) | logits held "
        "(full, kept) | max abs logprob difference |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for prompt in (int(p) for p in args.prompts.split(",")):
        inputs = episodes(vocab, args.batch, prompt, args.response)
        timed(response_logits, model, inputs)  # warm-up of both paths' allocations
        timed(full_logits, model, inputs)
        seconds = {"full": [], "kept": []}
        difference = 0.0
        for repeat in range(args.repeats):
            order = [("full", full_logits), ("kept", response_logits)]
            results = {}
            for name, function in order if repeat % 2 == 0 else reversed(order):
                took, results[name] = timed(function, model, inputs)
                seconds[name].append(took)
            difference = max(difference, (results["full"] - results["kept"]).abs().max().item())
        ratios = [f / k for f, k in zip(seconds["full"], seconds["kept"])]
        held = [args.batch * (prompt + args.response) * vocab * 4, args.batch * (args.response + 1) * vocab * 4]
        print(
            f"| {prompt} | {min(seconds['full']):.3f}, {statistics.median(seconds['full']):.3f} | "
            f"{min(seconds['kept']):.3f}, {statistics.median(seconds['kept']):.3f} | "
            f"{min(ratios):.2f}x, {statistics.median(ratios):.2f}x | {held[0] / 2**20:,.0f} MiB, "
            f"{held[1] / 2**20:,.0f} MiB | {difference:.2e} |"
        )
    print("load average at end " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
