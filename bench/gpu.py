"""The GPU checks of issue 16, in one short run: GPT-2 small's training step and the sampler against Hugging Face.

1. Training step: GPT-2 small (124M: 12 layers, 768 wide, 1024 positions, 50257 tokens; random weights, nothing
   is downloaded), batch 16 x 1024, bf16 autocast, fp32 master weights, AdamW (lr 6e-4, betas 0.9/0.95, weight
   decay 0.1), clipping at 1.0, on fixed random-token batches:
   - `hf eager` / `hf compiled`: the bare loop a user writes, `model(ids, labels=ids).loss.backward()`, clip, step,
     zero_grad, on the model as built and after `model.compile()`;
   - `prefer eager` / `prefer compiled`: `prefer.training.block_step.train_step` (what `prefer pretrain` calls each
     step) with the MLE objective, on the same two models.
   All four start from the same weights; each is warmed up (compilation included, its time printed apart), then
   timed over `--steps` steps in `--rounds` rounds whose order rotates. Printed: tokens/s (median over rounds) and
   each against `hf compiled`, the bar of the issue, and the losses of the first step (same weights and batch:
   they should agree to bf16 rounding).
2. Sampling: `prefer.sample` against `model.generate` on the same model in bf16, batch `--sample-batch` (64),
   prompts of 1 and 64 tokens, 128 new tokens, temperature 0.7, top-p 0.9 (generate: top_k=0), end-of-text
   suppressed in both, in alternating pairs; and greedy decoding of both, compared token for token.

Prepared on the CPU (`python bench/gpu.py --device cpu --tiny` runs every path on a 2-layer model with a 512-token
vocabulary); on the device machine, whose image has no omegaconf, pycodestyle or pysbd and another transformers,
the wheels that `bench/gpu_wheels.sh` downloads travel in `.whl` (docs/benchmarks.md, "On a GPU", has the whole
call).
Writes the figures as JSON to `--out` as well as printing them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import torch
import transformers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from prefer.config import ObjectiveConfig, OptimizerConfig, ScheduleConfig
from prefer.pretraining_objectives import OBJECTIVES
from prefer.sampling import sample
from prefer.training import Distributed, make_optimizer_and_schedule
from prefer.training.block_step import train_step

LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 6e-4, (0.9, 0.95), 0.1, 1.0


def _config(args) -> GPT2Config:
    if args.tiny:  # every path of the script on the CPU (39 s with compilation, docs/benchmarks.md)
        return GPT2Config(
            n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=512, bos_token_id=511, eos_token_id=511
        )
    return GPT2Config()  # GPT-2 small: 12 x 768, 1024 positions, 50257 tokens


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """What a user writes without prefer: Hugging Face's own loss, backward, clip, AdamW."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """One step; the loss stays a tensor (reading it would sync the GPU in every step)."""
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            loss = self.model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class PreferLoop:
    """prefer's pretraining step, MLE objective, as `prefer pretrain` runs it (precision bf16)."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.optimizer, self.scheduler = make_optimizer_and_schedule(
            [model],
            OptimizerConfig(lr=LR, weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1], grad_clip=GRAD_CLIP),
            ScheduleConfig(warmup_fraction=0.0),
            total_steps=1_000_000,
        )
        self.compute_loss = OBJECTIVES["mle"].make_loss(ObjectiveConfig(name="mle").resolved("pii"))
        self.scores = None

    def step(self, ids: torch.Tensor) -> float:
        if self.scores is None or self.scores.shape != ids.shape:
            self.scores = torch.zeros(ids.shape, device=ids.device)
        totals, _ = train_step(
            self.model,
            None,
            self.compute_loss,
            ids,
            self.scores,
            trained=[self.model],
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            micro=len(ids),
            num_tokens=ids.numel() - len(ids),
            device=self.device,
            precision="bf16",
            grad_clip=GRAD_CLIP,
            dist=Distributed(),
        )
        return totals["loss"]


def training_step(args, device) -> dict:
    config = _config(args)
    positions = config.n_positions
    generator = torch.Generator().manual_seed(0)
    batches = torch.randint(
        0, config.vocab_size, (args.steps + args.warmup, args.batch, positions), generator=generator
    )
    batches = batches.to(device)
    torch.manual_seed(0)
    initial = GPT2LMHeadModel(config).state_dict()
    loops = {}
    for name in args.loops.split(","):
        model = GPT2LMHeadModel(config).to(device).train()
        model.load_state_dict(initial)
        if name.endswith("compiled"):
            model.compile()
        loops[name] = (BareLoop if name.startswith("hf") else PreferLoop)(model, device)
    result: dict = {"model": f"GPT-2 {config.n_layer}x{config.n_embd}", "batch": [args.batch, positions], "loops": {}}
    for name, loop in loops.items():  # warm-up: compilation, allocator, autotuning
        started = time.perf_counter()
        first_loss = float(loop.step(batches[0]))
        for i in range(1, args.warmup):
            loop.step(batches[i])
        _synchronize(device)
        result["loops"][name] = {"warmup_s": time.perf_counter() - started, "first_loss": first_loss, "times": []}
    names = list(loops)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            _synchronize(device)
            started = time.perf_counter()
            for i in range(args.warmup, args.warmup + args.steps):
                loops[name].step(batches[i])
            _synchronize(device)
            result["loops"][name]["times"].append(time.perf_counter() - started)
    tokens = args.steps * args.batch * positions
    bar = result["loops"].get("hf compiled", result["loops"][names[0]])
    print(f"training step: {result['model']}, batch {args.batch} x {positions}, bf16 autocast, {args.rounds} rounds")
    for name, entry in result["loops"].items():
        entry["tokens_per_s"] = tokens / statistics.median(entry["times"])
        entry["against_bar"] = statistics.median(bar["times"]) / statistics.median(entry["times"])
        print(
            f"  {name:16s} {entry['tokens_per_s']:10.0f} tok/s (median), {entry['against_bar']:.3f}x hf compiled; "
            f"min step {min(entry['times']) / args.steps * 1e3:7.1f} ms; warm-up {entry['warmup_s']:6.1f} s; "
            f"first loss {entry['first_loss']:.5f}"
        )
    return result


@torch.no_grad()
def _generate(model, prompts, new_tokens: int, seed: int, *, greedy: bool = False) -> list[list[int]]:
    ids = torch.tensor(prompts, device=next(model.parameters()).device)
    torch.manual_seed(seed)
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else 0.7,
        top_p=None if greedy else 0.9,
        top_k=None if greedy else 0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.eos_token_id,
    )
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[:, ids.shape[1] :].tolist()


def _prefer(model, prompts, new_tokens: int, seed: int, *, greedy: bool = False) -> list[list[int]]:
    device = next(model.parameters()).device
    return sample(
        model,
        prompts,
        max_new_tokens=new_tokens,
        eos_token_id=model.config.eos_token_id,
        blocked_token_ids=[model.config.eos_token_id],
        temperature=0.0 if greedy else 0.7,
        top_p=1.0 if greedy else 0.9,
        batch_size=len(prompts),
        generator=torch.Generator(device=device).manual_seed(seed),
    )


def sampling(args, device) -> dict:
    config = _config(args)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device=device, dtype=torch.bfloat16).eval()
    result: dict = {}
    for prompt_tokens in (1, 64):
        generator = torch.Generator().manual_seed(prompt_tokens)
        prompts = torch.randint(
            0, config.eos_token_id, (args.sample_batch, prompt_tokens), generator=generator
        ).tolist()
        runners = {"generate": _generate, "prefer": _prefer}
        for run in runners.values():  # warm-up
            run(model, prompts, 4, 0)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for pair in range(args.pairs):
            for name in list(runners) if pair % 2 == 0 else list(runners)[::-1]:
                _synchronize(device)
                started = time.perf_counter()
                outputs = runners[name](model, prompts, args.new_tokens, pair)
                _synchronize(device)
                times[name].append(time.perf_counter() - started)
                assert sum(map(len, outputs)) == args.sample_batch * args.new_tokens, name
        greedy_ours = _prefer(model, prompts, args.new_tokens, 0, greedy=True)
        greedy_theirs = _generate(model, prompts, args.new_tokens, 0, greedy=True)
        same_rows = sum(a == b for a, b in zip(greedy_ours, greedy_theirs))
        entry = {
            "generate_s": times["generate"],
            "prefer_s": times["prefer"],
            "speedup_min": min(times["generate"]) / min(times["prefer"]),
            "speedup_median": statistics.median(times["generate"]) / statistics.median(times["prefer"]),
            "greedy_rows_equal": same_rows,
        }
        result[f"prompt_{prompt_tokens}"] = entry
        print(
            f"sampling: batch {args.sample_batch}, prompt {prompt_tokens} token(s), {args.new_tokens} new, bf16: "
            f"generate median {statistics.median(times['generate']):.3f} s, "
            f"prefer {statistics.median(times['prefer']):.3f} s; "
            f"speed-up {entry['speedup_min']:.2f}x (mins), {entry['speedup_median']:.2f}x (medians); "
            f"greedy: {same_rows}/{len(prompts)} rows equal to generate's"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a 2-layer model and a 512-token vocabulary, for a check of the script on the CPU",
    )
    parser.add_argument("--loops", default="hf eager,hf compiled,prefer eager,prefer compiled")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--skip", choices=("training", "sampling"), action="append", default=[])
    parser.add_argument("--out", help="also write the figures here, as JSON")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # generate's notices
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what a user of either sets; both sides get it
        torch.backends.cudnn.allow_tf32 = True
    versions = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    print(", ".join(f"{k} {v}" for k, v in versions.items()))
    report = {"versions": versions, "args": vars(args)}
    if "training" not in args.skip:
        report["training_step"] = training_step(args, device)
    if "sampling" not in args.skip:
        report["sampling"] = sampling(args, device)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
