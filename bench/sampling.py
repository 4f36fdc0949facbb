"""Sampling speed: prefer.sample against Hugging Face `generate` on the same model, same settings, same run.

Both draw `--new-tokens` tokens per row at temperature 0.7 and top-p 0.9 (generate: top_k=0, so nucleus only;
prefer: no control tokens, so its nucleus is the plain one), from the demo's `small` GPT-2 (4 layers, 128 wide,
4096 tokens) with random weights. The end-of-text token is suppressed in both (generate: min_new_tokens; prefer:
blocked), so every row gets exactly `--new-tokens` tokens. The two are timed in alternating pairs (the order
flips every pair) and the min and median of each are printed, with the ratio generate / prefer of each.

    python bench/sampling.py --batch 128 --prompt-tokens 1 --threads 1 --pairs 3

--compile times prefer.sample with the model's forward under torch.compile(dynamic=True) against prefer.sample
without it instead (compile time, taken by the warm-up, is printed apart).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import transformers
from transformers import GenerationConfig

from prefer.models.build import build_model
from prefer.sampling import sample

EOS = 0


def _prompts(batch: int, prompt_tokens: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 4096, (batch, prompt_tokens), generator=gen).tolist()


@torch.no_grad()
def hf_generate(
    model, prompts: list[list[int]], *, new_tokens: int, seed: int, temperature: float, top_p: float, eos: int, group=1
) -> int:
    """The baseline of both sampling benches: Hugging Face `generate` on equal-length prompts (no padding), exactly
    `new_tokens` sampled tokens per sequence, `group` sequences per prompt. Returns the tokens generated."""
    ids = torch.tensor(prompts)
    torch.manual_seed(seed)  # generate draws from the global generator
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        num_return_sequences=group,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return (out.shape[1] - ids.shape[1]) * out.shape[0]


def run_generate(model, prompts: list[list[int]], new_tokens: int, seed: int) -> int:
    return hf_generate(model, prompts, new_tokens=new_tokens, seed=seed, temperature=0.7, top_p=0.9, eos=EOS)


def run_prefer(model, prompts: list[list[int]], new_tokens: int, seed: int) -> int:
    outputs = sample(
        model,
        prompts,
        max_new_tokens=new_tokens,
        eos_token_id=EOS,
        blocked_token_ids=[EOS],
        temperature=0.7,
        top_p=0.9,
        batch_size=len(prompts),
        generator=torch.Generator().manual_seed(seed),
    )
    return sum(len(o) for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="compare compiled and eager prefer.sample")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # generate's own notices; prefer's sampler prints none (tests/test_sampling.py)
    torch.manual_seed(0)
    model = build_model("small", vocab_size=4096, eos_token_id=EOS).eval()
    prompts = _prompts(args.batch, args.prompt_tokens, seed=0)
    runners = {"generate": run_generate, "prefer": run_prefer}
    if args.compile:
        compiled = build_model("small", vocab_size=4096, eos_token_id=EOS).eval()
        compiled.load_state_dict(model.state_dict())
        compiled.forward = torch.compile(compiled.forward, dynamic=True)
        runners = {"eager": run_prefer, "compiled": lambda _, *a: run_prefer(compiled, *a)}
    for name, run in runners.items():  # warm-up: first-call allocations, lazy imports, compilation
        started = time.perf_counter()
        run(model, prompts, 4, 0)
        if args.compile:
            print(f"  warm-up of {name} (4 steps; compiles): {time.perf_counter() - started:.1f} s")
    times: dict[str, list[float]] = {name: [] for name in runners}
    for pair in range(args.pairs):
        order = list(runners) if pair % 2 == 0 else list(runners)[::-1]
        for name in order:
            started = time.perf_counter()
            tokens = runners[name](model, prompts, args.new_tokens, pair)
            times[name].append(time.perf_counter() - started)
            assert tokens == args.batch * args.new_tokens, (name, tokens)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s); "
        f"batch {args.batch}, prompt {args.prompt_tokens} token(s), {args.new_tokens} new tokens, "
        f"{args.pairs} alternating pairs"
    )
    for name, ts in times.items():
        print(
            f"  {name:8s} min {min(ts):7.2f} s  median {statistics.median(ts):7.2f} s  "
            f"({args.batch * args.new_tokens / min(ts):7.0f} tokens/s at the min)"
        )
    (base_name, g), (name, p) = times.items()
    print(
        f"  speed-up of {name} over {base_name}: {min(g) / min(p):.2f}x (mins), "
        f"{statistics.median(g) / statistics.median(p):.2f}x (medians)"
    )


if __name__ == "__main__":
    main()
