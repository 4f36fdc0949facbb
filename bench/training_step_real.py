"""Training-step speed on SmolLM2-135M-Instruct: prefer's SFT and DPO optimizer steps against a bare PyTorch loop
over the same model and batch, with LoRA and full finetuning, with and without gradient checkpointing, and each as
a CPU MFU.

    OMP_NUM_THREADS=1 python bench/training_step_real.py [--configs sft-lora,sft-full,dpo-lora,dpo-full,...]
                                                         [--rows 4] [--length 256] [--steps 2] [--repeats 3]

The model is prefer's named offline source `smollm2-135m-instruct` (prefer.models.sources). Batches are fixed random
tokens (`--rows` sequences of `--length` tokens per step, no padding; the same for both sides):

- SFT: each row a "demonstration" whose second half is the response (the loss tokens). prefer: the body of
  `prefer sft`'s loop, `accumulate_gradients` over `prefer.stages.sft._step_loss` (sft_loss: mle_loss on the response
  tokens) and `optimizer_step` (clip at 1.0, AdamW, schedule); the model loaded and made ready by the stage's own
  `load_model` and `prefer.models.lora.prepare`. bare: `model(ids, labels=labels).loss` (labels -100 off the
  response), `backward`, `clip_grad_norm_`, `AdamW.step`, `zero_grad`; LoRA through peft's `get_peft_model`.
- DPO: `--rows` / 2 prompts with a chosen and a rejected response each (prompt = the first quarter of the row).
  prefer: the body of `prefer dpo`'s loop, `accumulate_gradients` over `prefer.stages.dpo._step_loss` (the DPO
  RankingObjective, beta 0.1) and `optimizer_step`, with the stage's cached reference table
  (`reference_logprobs`, computed once before the first step, as the stage does). bare: one forward of the 2P rows,
  per-row summed response log-probs with `F.cross_entropy(reduction="none")`, `-logsigmoid(beta (policy margin -
  reference margin)).mean()`, the reference log-probs likewise cached.

LoRA: rank 8, alpha 16, no dropout, on q/k/v/o/gate/up/down (prefer's default targets for Llama); "-gc" configs turn
on gradient checkpointing (prefer: runtime.gradient_checkpointing, non-reentrant; bare: the same HF call). AdamW lr
1e-5, no weight decay, clipping at 1.0, fp32. Each side runs in its own worker process, both alive for the whole run
and one at a time; per config the parent times `--steps` steps of one then of the other after `--warmup` untimed
steps, `--repeats` pairs, the order flipping every pair. Printed: tokens/s (rows x length per step) of each, min and
median over the pairs of prefer/bare (>1: prefer faster), and the CPU MFU:

    MFU = model FLOPs per token x tokens/s / matmul rate (bench/limits.py, fp32 torch.mm at --threads, same run)
    model FLOPs per token: full finetuning 6 N + 12 L d T; LoRA 4 N + 12 L d T

N = parameters that multiply activations (every Linear's weight, the tied output head included; the embedding
lookup is free), L layers, d width, T = --length: 2 N forward, 2 N for the input gradients, 2 N for the weight
gradients (absent for LoRA's frozen weights; the adapters' own FLOPs are < 1% and left out), and 12 L d T the
attention scores and mix (forward 4 L d T, backward 8, PaLM's convention, no causal discount). Recomputation under
gradient checkpointing is not model FLOPs: its MFU shows the price.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import warnings
from pathlib import Path

MODEL = "smollm2-135m-instruct"
CONFIGS = ("sft-lora", "sft-full", "dpo-lora", "dpo-full", "sft-lora-gc", "sft-full-gc", "dpo-lora-gc", "dpo-full-gc")
LR, GRAD_CLIP, BETA, LORA_R = 1e-5, 1.0, 0.1, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _batches(args, vocab: int):
    """[steps, rows, length] random ids and the response mask (SFT: second half; DPO: after the first quarter)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.warmup + args.steps, args.rows, args.length), generator=generator)
    return ids


def _split(config: str) -> tuple[str, bool, bool]:
    kind, tuning, *rest = config.split("-")
    return kind, tuning == "lora", rest == ["gc"]


class Bare:
    def __init__(self, path: Path, config: str, args):
        import torch
        from transformers import AutoModelForCausalLM

        self.kind, lora, checkpointing = _split(config)
        self.prompt = args.length // 4
        model = AutoModelForCausalLM.from_pretrained(str(path))
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, target_modules=TARGETS))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if lora:
                model.enable_input_require_grads()
        self.model = model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0)
        self.reference = None

    def _row_logprobs(self, ids):
        import torch.nn.functional as F

        logits = self.model(input_ids=ids).logits[:, :-1]
        token = -F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        return token[:, self.prompt - 1 :].sum(dim=1)  # the response tokens' log-probs

    def step(self, ids):
        import torch
        import torch.nn.functional as F

        if self.kind == "sft":
            labels = ids.clone()
            labels[:, : ids.shape[1] // 2] = -100
            loss = self.model(input_ids=ids, labels=labels).loss
        else:
            if self.reference is None:
                raise RuntimeError("reference log-probs not cached")
            policy = self._row_logprobs(ids).view(-1, 2)
            margin = (policy[:, 0] - policy[:, 1]) - (self.reference[:, 0] - self.reference[:, 1])
            loss = -F.logsigmoid(BETA * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def cache_reference(self, ids):
        import torch

        if self.kind == "dpo":  # the step's batch is the same every step: one reference row pair per prompt
            with torch.no_grad():
                self.model.eval()
                self.reference = self._row_logprobs(ids).view(-1, 2)
                self.model.train()


class Prefer:
    def __init__(self, path: Path, config: str, args):
        import torch

        from prefer.config import LoRAConfig, OptimizerConfig, ScheduleConfig
        from prefer.models.build import load_model, load_tokenizer
        from prefer.models.lora import prepare
        from prefer.training import Distributed, make_optimizer_and_schedule
        from prefer.training.preference_batches import OBJECTIVES

        self.kind, lora, checkpointing = _split(config)
        self.prompt = args.length // 4
        self.tokenizer = load_tokenizer(path)
        model = load_model(path, tokenizer=self.tokenizer)
        prepare(model, LoRAConfig(r=LORA_R if lora else 0, alpha=2.0 * LORA_R), gradient_checkpointing=checkpointing)
        self.model = model.train()
        self.optimizer, self.scheduler = make_optimizer_and_schedule(
            [model], OptimizerConfig(lr=LR, weight_decay=0.0, grad_clip=GRAD_CLIP), ScheduleConfig(), total_steps=1000
        )
        self.objective = OBJECTIVES["dpo"]("dpo", {"beta": BETA})
        self.dist, self.device = Distributed(), torch.device("cpu")
        self.eos = self.tokenizer.eos_token_id
        self.reference = None

    def _rankings(self, ids):
        from prefer.training.preference_batches import EncodedRankings

        rows = ids.tolist()
        pairs = [[rows[i], rows[i + 1]] for i in range(0, len(rows), 2)]
        return EncodedRankings(pairs, [self.prompt] * len(pairs), [(0, 1)] * len(pairs))

    def cache_reference(self, ids):
        from prefer.training.preference_batches import reference_logprobs

        if self.kind == "dpo":  # as `prefer dpo` does before its first step (the policy is the reference here)
            self.model.eval()
            rankings = self._rankings(ids)
            self.reference = reference_logprobs(
                self.model, rankings, batch_size=len(rankings), pad_id=self.eos, device=self.device, precision="auto"
            )
            self.model.train()

    def step(self, ids):
        from functools import partial

        import torch

        from prefer.stages import dpo, sft
        from prefer.training import optimizer_step
        from prefer.training.run import accumulate_gradients

        if self.kind == "sft":
            mask = torch.zeros(ids.shape, dtype=torch.bool)
            mask[:, ids.shape[1] // 2 :] = True
            train = sft.SFTExamples(ids, mask, torch.ones(ids.shape, dtype=torch.bool))
            loss_of = partial(
                sft._step_loss, self.model, train, device=self.device, precision="auto", num_tokens=float(mask.sum())
            )
            rows, keys = list(range(len(ids))), ("loss",)
        else:
            train = self._rankings(ids)
            loss_of = partial(
                dpo._step_loss, self.objective, self.model, train, self.reference, eos=self.eos, device=self.device,
                precision="auto", denominator=float(len(train)), state={},
            )  # fmt: skip
            rows, keys = list(range(len(train))), self.objective.keys
        totals = accumulate_gradients([self.model], rows, len(rows), loss_of, dist=self.dist, keys=keys)
        optimizer_step([self.model], self.optimizer, self.scheduler, grad_clip=GRAD_CLIP)
        return totals["loss"]


def worker(kind: str, path: Path, args, connection) -> None:
    """Serves config requests: a fresh learner per config (the previous one dropped), warmed up on first use."""
    import torch
    from transformers.utils import logging

    warnings.simplefilter("ignore")
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    learner, current, ids = None, None, None
    while (config := connection.recv()) is not None:
        if config != current:
            learner = None
            learner = (Bare if kind == "bare" else Prefer)(path, config, args)
            ids = _batches(args, learner.model.config.vocab_size)
            learner.cache_reference(ids[0])  # every step trains on batch 0's tokens' reference (DPO); see below
            for i in range(args.warmup):
                learner.step(ids[i])
            current = config
        started = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.steps):
            loss = learner.step(ids[0] if learner.kind == "dpo" else ids[i])  # DPO: the cached reference's batch
        connection.send((time.perf_counter() - started, loss))


def model_flops_per_token(path: Path, length: int, lora: bool) -> tuple[float, dict]:
    """6N (LoRA: 4N) + 12 L d T, with N the parameters of every Linear (the tied head included)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path))
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    layers, width = model.config.num_hidden_layers, model.config.hidden_size
    flops = (4 if lora else 6) * n + 12 * layers * width * length
    return flops, {"N": n, "L": layers, "d": width}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="sft-lora,sft-full,dpo-lora,dpo-full,sft-lora-gc,sft-full-gc")
    parser.add_argument("--rows", type=int, default=4, help="sequences per step (DPO: 2 per prompt)")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before a config's first measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating pairs per config")
    args = parser.parse_args()
    configs = args.configs.split(",")
    if set(configs) - set(CONFIGS) or args.rows % 2:
        parser.error(f"--configs: some of {','.join(CONFIGS)}; --rows even")

    import os

    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from limits import matmul_rate

    from prefer.models.sources import resolve_model_path

    torch.set_num_threads(args.threads)
    path = resolve_model_path(MODEL)
    context = multiprocessing.get_context("spawn")
    connections, processes = {}, []
    for kind in ("bare", "prefer"):
        ours, theirs = context.Pipe()
        process = context.Process(target=worker, args=(kind, path, args, theirs), daemon=True)
        process.start()
        connections[kind], processes = ours, processes + [process]
    rate_before = statistics.median(matmul_rate(repeats=5))
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s), "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {MODEL}, {args.rows} x {args.length} tokens per "
        f"step; {args.repeats} alternating pairs of {args.steps} steps per config after {args.warmup} warm-up"
    )
    times = {config: {"bare": [], "prefer": []} for config in configs}
    for config in configs:
        for repeat in range(args.repeats):
            for kind in ("bare", "prefer") if repeat % 2 == 0 else ("prefer", "bare"):
                connections[kind].send(config)
                elapsed, _ = connections[kind].recv()
                times[config][kind].append(elapsed)
    for connection in connections.values():
        connection.send(None)
    for process in processes:
        process.join()
    rate = statistics.median([rate_before, *matmul_rate(repeats=5)])
    tokens = args.steps * args.rows * args.length
    flops = {lora: model_flops_per_token(path, args.length, lora) for lora in (False, True)}
    shape = flops[False][1]
    print(
        f"matmul rate {rate / 1e9:.1f} GFLOP/s ({args.threads} thread(s), median of the runs before and after); "
        f"N {shape['N'] / 1e6:.1f}M, L {shape['L']}, d {shape['d']}, T {args.length}: model FLOPs per token "
        f"{flops[False][0] / 1e9:.3f} G (full), {flops[True][0] / 1e9:.3f} G (LoRA)"
    )
    print("| config | prefer tok/s | bare tok/s | prefer/bare min | median | prefer MFU | bare MFU |")
    print("|---|---|---|---|---|---|---|")
    for config in configs:
        bare, ours = times[config]["bare"], times[config]["prefer"]
        ratios = [b / p for b, p in zip(bare, ours)]
        per_token = flops[_split(config)[1]][0]
        prefer_rate, bare_rate = tokens / statistics.median(ours), tokens / statistics.median(bare)
        print(
            f"| {config} | {prefer_rate:.0f} | {bare_rate:.0f} | {min(ratios):.3f} | {statistics.median(ratios):.3f} "
            f"| {per_token * prefer_rate / rate:.1%} | {per_token * bare_rate / rate:.1%} |"
        )


if __name__ == "__main__":
    main()
