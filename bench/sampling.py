"""Sampling speed: prefer's KV-cached sampler against recomputing the whole prefix every step (the baseline,
measured in the same run), on the demo's `small` GPT-2. Prints tokens/s and the ratio.

    python bench/sampling.py [--samples 128] [--new-tokens 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from prefer.models.build import build_model
from prefer.sampling import sample


@torch.no_grad()
def recompute_baseline(model, prompt: list[int], *, num_samples: int, max_new_tokens: int, generator) -> int:
    """Plain sampling at temperature 1 without a cache: every step runs the model over the whole prefix."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt] * num_samples, device=device)
    for _ in range(max_new_tokens):
        probs = torch.softmax(model(ids).logits[:, -1].float(), dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return num_samples * max_new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("small", vocab_size=4096, eos_token_id=0).to(args.device).eval()
    prompt = [0]
    timings = {}
    for name in ("baseline (no cache)", "prefer.sample (KV cache)"):
        generator = torch.Generator(device=args.device).manual_seed(0)
        started = time.perf_counter()
        if name.startswith("baseline"):
            tokens = recompute_baseline(model, prompt, num_samples=args.samples, max_new_tokens=args.new_tokens,
                                        generator=generator)
        else:
            # eos_token_id outside the sampled range never ends a row early, so both generate the same count
            outputs = sample(model, [prompt] * args.samples, max_new_tokens=args.new_tokens, eos_token_id=4095,
                             blocked_token_ids=[4095], batch_size=args.samples, generator=generator)
            tokens = sum(len(o) for o in outputs)
        timings[name] = tokens / (time.perf_counter() - started)
        print(f"{name:28s} {timings[name]:10.0f} tokens/s")
    base, ours = timings.values()
    print(f"speed-up of the KV cache: {ours / base:.2f}x ({args.samples} samples x {args.new_tokens} tokens, "
          f"{args.device})")


if __name__ == "__main__":
    main()
