"""Sampling at the size users bring: prefer's sampler against Hugging Face `generate` on SmolLM2-135M-Instruct.

    python bench/sampling_real.py --batch 8 --prompt-tokens 32 --new-tokens 64 --pairs 2 --threads 1
    python bench/sampling_real.py --batch 8 --prompt-tokens 256 --new-tokens 64 --group 8   # K samples per prompt

The model is `model.init_from=smollm2-135m-instruct` (prefer's named offline source, float32), loaded through
`prefer.models.build.load_model`. Prompts are chat prompts (the model's chat template around an English text) cut
to exactly `--prompt-tokens` tokens, a different text per prompt. Both samplers draw from the full distribution
(temperature 1, top-p 1; generate: top_k=0) with end-of-text suppressed (generate: min_new_tokens; prefer:
blocked), so every row gets exactly `--new-tokens` tokens. `--group K`: batch/K prompts, K samples each (prefer:
`sample_per_prompt` with `share_prompt_cache`, each prompt encoded once; generate: num_return_sequences=K, which
encodes each prompt K times). The two are timed in alternating pairs (order flips every pair); min and median.

Every forward call of the model is timed (a hook): the first of a run is the prompt pass, the others are decoding
steps. A decoding step reads all the weights (lm_head included, embeddings tied) plus the cached keys and values
of every row; `bytes / median step time / measured read bandwidth` is the fraction of the machine's memory
bandwidth (bench/limits.py's read-only sum, measured in the same run, same threads) a step reaches. `--profile` prints
torch.profiler's operator table of one prefer run instead (the `forward` row: the model's share of it).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

from prefer.models.build import load_model, load_tokenizer
from prefer.sampling import Decoding, sample, sample_per_prompt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from limits import memory_bandwidth  # noqa: E402
from sampling import hf_generate  # noqa: E402 -- bench/sampling.py: the same generate baseline

MODEL = "smollm2-135m-instruct"
TEXT = (Path(__file__).resolve().parent.parent / "docs" / "design.md").read_text()


def chat_prompts(tokenizer, count: int, tokens: int) -> list[list[int]]:
    """`count` chat prompts of exactly `tokens` tokens: the chat template's user turn around successive windows of
    docs/design.md, its head cut so that the assistant header stays at the end."""
    words = TEXT.split()
    prompts = []
    for i in range(count):
        start = i * 40 % max(1, len(words) - 4 * tokens)  # windows wrap around for large batches
        text = " ".join(words[start : start + 4 * tokens])
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        if len(ids) < tokens:
            raise SystemExit(f"prompt {i} has only {len(ids)} tokens; ask for fewer")
        prompts.append(ids[:8] + ids[len(ids) - (tokens - 8) :])  # keep the system/user header and the tail
    return prompts


class StepTimer:
    """Wall time of every forward call of a module (a pre-hook and a hook)."""

    def __init__(self, model: torch.nn.Module):
        self.times: list[float] = []
        self._started = 0.0
        model.register_forward_pre_hook(lambda *_: setattr(self, "_started", time.perf_counter()))
        model.register_forward_hook(lambda *_: self.times.append(time.perf_counter() - self._started))


def run_generate(model, prompts: list[list[int]], group: int, new_tokens: int, eos: int, seed: int) -> int:
    return hf_generate(
        model, prompts, new_tokens=new_tokens, seed=seed, temperature=1.0, top_p=1.0, eos=eos, group=group
    )


def run_prefer(model, prompts: list[list[int]], group: int, new_tokens: int, eos: int, seed: int) -> int:
    decoding = Decoding(new_tokens, eos, 1.0, 1.0, (eos,), (), len(prompts) * group, share_prompt_cache=group > 1)
    if group > 1:
        outputs = sample_per_prompt(model, prompts, decoding, k=group, seed=seed)
    else:
        outputs = sample(model, prompts, decoding, generator=torch.Generator().manual_seed(seed))
    return sum(len(o) for o in outputs)


def step_bytes(model, batch: int, context: float) -> float:
    """Bytes a decoding step reads: every weight once (tied embeddings once) + keys and values of `context`
    positions for each of `batch` rows."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() lists a tied one once
    config = model.config
    kv_per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    return weights + batch * context * kv_per_position


def profile(model, prompts: list[list[int]], args, eos: int) -> None:
    """torch.profiler's operators of one prefer run, by self CPU time; every forward call marked as `forward`."""
    from torch.profiler import profile as torch_profile
    from torch.profiler import record_function

    run_prefer(model, prompts, args.group, 2, eos, 0)  # warm-up
    forward = model.forward

    @functools.wraps(forward)  # keeps forward's signature: the sampler reads it (logits_to_keep)
    def recorded(*args, **kwargs):
        with record_function("forward"):
            return forward(*args, **kwargs)

    model.forward = recorded
    with torch_profile(record_shapes=True) as prof:
        run_prefer(model, prompts, args.group, args.new_tokens, eos, 0)
    model.forward = forward
    print(f"load {os.getloadavg()[0]:.1f}; one prefer run, {args.new_tokens} new tokens, batch {args.batch}")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="rows sampled together (prompts x group)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--group", type=int, default=1, help="K samples per prompt (batch must be a multiple)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of one prefer run")
    args = parser.parse_args()
    if args.batch % args.group:
        raise SystemExit("--batch must be a multiple of --group")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    tokenizer = load_tokenizer(MODEL)
    model = load_model(MODEL).eval()
    eos = tokenizer.eos_token_id
    prompts = chat_prompts(tokenizer, args.batch // args.group, args.prompt_tokens)
    if args.profile:
        profile(model, prompts, args, eos)
        return
    timer = StepTimer(model)
    runners = {"generate": run_generate, "prefer": run_prefer}
    for run in runners.values():  # warm-up
        run(model, prompts, args.group, 2, eos, 0)
    times: dict[str, list[float]] = {name: [] for name in runners}
    prefill: dict[str, list[float]] = {name: [] for name in runners}
    steps: dict[str, list[float]] = {name: [] for name in runners}
    for pair in range(args.pairs):
        for name in list(runners) if pair % 2 == 0 else list(runners)[::-1]:
            timer.times.clear()
            started = time.perf_counter()
            tokens = runners[name](model, prompts, args.group, args.new_tokens, eos, pair)
            times[name].append(time.perf_counter() - started)
            assert tokens == args.batch * args.new_tokens, (name, tokens)
            prefill[name].append(timer.times[0])
            steps[name].extend(timer.times[1:])
    read = statistics.median(memory_bandwidth(megabytes=512, repeats=5)["read"])
    context = args.prompt_tokens + args.new_tokens / 2  # average cached positions over the decoding steps
    nbytes = step_bytes(model, args.batch, context)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s), "
        f"load {os.getloadavg()[0]:.1f}; {MODEL}: batch {args.batch} (group {args.group}), prompt "
        f"{args.prompt_tokens} tokens, {args.new_tokens} new, {args.pairs} pairs; read bandwidth {read / 1e9:.1f} GB/s"
    )
    for name, ts in times.items():
        step = statistics.median(steps[name])
        print(
            f"  {name:8s} min {min(ts):7.2f} s  median {statistics.median(ts):7.2f} s  "
            f"({args.batch * args.new_tokens / min(ts):6.1f} tokens/s)  prompt pass {min(prefill[name]):6.2f} s  "
            f"decoding step {step * 1e3:6.1f} ms ({nbytes / 1e9:.2f} GB: {nbytes / step / read:4.0%} of bandwidth)"
        )
    g, p = times["generate"], times["prefer"]
    print(
        f"  speed-up of prefer over generate: {min(g) / min(p):.2f}x (mins), "
        f"{statistics.median(g) / statistics.median(p):.2f}x (medians)"
    )


if __name__ == "__main__":
    main()
