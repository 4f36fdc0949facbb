"""PPO with full finetuning vs LoRA (and LoRA with the critic on the policy's trunk) on the same model: peak memory
and time per iteration, measured in one run.

Each variant runs `prefer ppo` (the stage itself) in a fresh process, so that its peak resident memory is its own:
full finetuning holds the policy, the frozen reference and the value model (policy and critic with gradients and
two Adam moments each); LoRA holds the policy's trunk once (the reference is the same trunk with the adapters off),
the value trunk, and gradients and Adam moments of the adapters only; `value_trunk=shared` drops the value trunk
too (the critic is a head on the policy's trunk): one model for policy, reference and critic. Peak memory is the
process's peak RSS (`getrusage`) minus its RSS just before the stage starts; on a GPU, max_memory_allocated.

    python bench/lora_memory.py [--hidden 512] [--layers 8] [--iterations 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the cat sat on a mat and the dog ran to the red sun while blue trees grew".split()


def build(directory: Path, *, hidden: int, layers: int) -> int:
    """A random Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention) with a BPE, saved as an HF directory."""
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefer.data.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    tokenizer = train_tokenizer(texts, vocab_size=1000)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory / "model")
    tokenizer.save_pretrained(directory / "model")
    (directory / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": " ".join(WORDS[i : i + 4])}) + "\n" for i in range(12))
    )
    return sum(p.numel() for p in model.parameters())


def run_variant(directory: Path, variant: str, *, iterations: int, device: str) -> dict:
    """One PPO run in this process (called in a child): its peak memory and seconds per iteration."""
    import psutil
    import torch

    from prefer import scorers
    from prefer.config import PolicyGradientConfig, build_config
    from prefer.stages.policy_gradient import ppo

    scorers.SCORERS["length"] = lambda texts: [len(t) / 100 for t in texts]  # any cheap reward: memory is the point
    values = {
        "out_dir": directory / variant,
        "model.init_from": directory / "model",
        "prompts": directory / "prompts.jsonl",
        "reward.scorer": "length",
        "train.iterations": iterations,
        "train.batch_size": 8,
        "train.minibatch_size": 8,
        "rollout.max_new_tokens": 32,
        "optimizer.lr": 1e-4,
        "train.checkpoint_every": 10_000,
        "runtime.progress": False,
        "runtime.device": device,
        "lora.r": 0 if variant == "full" else 8,
        "value_trunk": "shared" if variant == "lora-shared" else "separate",
    }
    config = build_config(PolicyGradientConfig, values)
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    ppo(config)
    seconds = time.perf_counter() - started
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # ru_maxrss: KiB on Linux
    return {"peak_bytes": peak, "seconds_per_iteration": seconds / iterations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(Path(args.dir), args.variant, iterations=args.iterations, device=args.device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        parameters = build(directory, hidden=args.hidden, layers=args.layers)
        results = {}
        for variant in ("full", "lora", "lora-shared"):
            output = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--variant",
                    variant,
                    "--dir",
                    tmp,
                    "--iterations",
                    str(args.iterations),
                    "--device",
                    args.device,
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            ).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
    full = results["full"]
    print(
        f"PPO on a random Llama of {parameters / 1e6:.1f}M parameters ({args.layers} layers, hidden {args.hidden}), "
        f"batch 8 x 32 new tokens, {args.iterations} iterations, {args.device}"
    )
    names = {"full": "full finetuning", "lora": "LoRA r=8", "lora-shared": "LoRA r=8, value_trunk=shared"}
    for name, result in results.items():
        print(
            f"  {names[name]:30s} peak memory {result['peak_bytes'] / 2**20:7.0f} MiB  "
            f"{result['seconds_per_iteration']:6.2f} s/iteration   full / this: memory "
            f"{full['peak_bytes'] / result['peak_bytes']:.2f}x, time "
            f"{full['seconds_per_iteration'] / result['seconds_per_iteration']:.2f}x"
        )


if __name__ == "__main__":
    main()
