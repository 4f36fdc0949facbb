"""Training-step speed: prefer's pretraining step against a bare PyTorch loop over the same HF model, same run.

Both train the model `prefer pretrain --config configs/pretrain-pii-small.yaml` (the demo's) builds (GPT-2
`small`: 4 layers, 128 wide, 256 positions; a `--vocab`-token vocabulary, the demo's 4096 by default, 8192 is
`model.vocab_size`'s default), from the same initial weights, on the same fixed random-token batches (`--batch` x
256, the demo's 8), with the same AdamW settings (lr 5e-4, betas 0.9/0.95, weight decay 0.1) and clipping at 1.0:

- bare: `model(ids, labels=ids).loss.backward()`, `clip_grad_norm_`, `AdamW.step()`, `zero_grad()`;
- prefer: `prefer.training.block_step.train_step`, the function `prefer pretrain` calls for every optimizer step, with
  each objective's loss (`prefer.pretraining_objectives.OBJECTIVES`; filtering and conditional are MLE on other
  data, so on random tokens they time the MLE step again) on per-token scores with ~10% bad tokens, in the
  process set-up `prefer pretrain` does on a CPU (`runtime.keep_freed_memory`).

Each runs in its own worker process (so each has its own allocator state and pays nothing for the other), both
alive for the whole run; the parent asks them in turn for `--steps` timed steps after `--warmup` untimed ones, in
alternating pairs (the order flips every pair), `--repeats` pairs per objective. Printed: min and median over the
pairs of prefer's tokens/s over bare's (>1 = prefer faster), and of each objective's step time against MLE's.
Evaluation is not part of either step (prefer's held-out evaluation runs every `train.eval_every` steps; time it
apart).

    OMP_NUM_THREADS=1 python bench/training_step.py --threads 1 --repeats 5 --steps 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import warnings

OBJECTIVE_NAMES = ("mle", "filtering", "conditional", "ul", "rwr", "awr")
SIZE, EOS = "small", 0
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 5e-4, (0.9, 0.95), 0.1, 1.0


def _batches(args):
    import torch

    generator = torch.Generator().manual_seed(0)
    count = args.warmup + args.steps
    ids = torch.randint(3, args.vocab, (count, args.batch, 256), generator=generator)
    bad = torch.rand(ids.shape, generator=generator) < 0.1
    scores = torch.where(bad, torch.rand(ids.shape, generator=generator) * 0.05, torch.zeros(()))
    return ids, scores


def _model(args):
    import torch

    from prefer.models.build import build_model

    torch.manual_seed(0)
    return build_model(SIZE, vocab_size=args.vocab, eos_token_id=EOS).train()


class Bare:
    def __init__(self, args, name):
        import torch

        self.model = _model(args)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)

    def step(self, ids, scores):
        import torch

        loss = self.model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class Prefer:
    def __init__(self, args, name):
        import torch

        from prefer.config import ObjectiveConfig, OptimizerConfig, ScheduleConfig
        from prefer.models.heads import ValueHead
        from prefer.pretraining_objectives import OBJECTIVES
        from prefer.training import Distributed, make_optimizer_and_schedule

        objective = ObjectiveConfig(name=name).resolved(args.task)
        spec = OBJECTIVES[name]
        self.model = _model(args)
        self.value_head = ValueHead(self.model.config.hidden_size) if spec.value_head else None
        self.trained = [self.model] + ([self.value_head] if self.value_head is not None else [])
        self.optimizer, self.scheduler = make_optimizer_and_schedule(
            self.trained,
            OptimizerConfig(lr=LR, weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1], grad_clip=GRAD_CLIP),
            ScheduleConfig(),
            total_steps=10_000,
        )
        self.compute_loss = spec.make_loss(objective)
        self.dist, self.device = Distributed(), torch.device("cpu")

    def step(self, ids, scores):
        from prefer.training.block_step import train_step

        totals, _ = train_step(
            self.model,
            self.value_head,
            self.compute_loss,
            ids,
            scores,
            trained=self.trained,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            micro=len(ids),
            num_tokens=ids.numel() - len(ids),
            device=self.device,
            precision="auto",
            grad_clip=GRAD_CLIP,
            dist=self.dist,
        )
        return totals["loss"]


def worker(kind: str, args, connection) -> None:
    """Serves ("run", objective) requests: warms a fresh learner up on first use, then times `--steps` steps."""
    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    if (kind == "prefer" and not args.no_keep_freed_memory) or (kind == "bare" and args.bare_keep_freed_memory):
        from prefer.training import keep_freed_memory

        keep_freed_memory()
    ids, scores = _batches(args)
    learners = {}
    while (request := connection.recv()) is not None:
        name = request
        if name not in learners:
            learners[name] = (Bare if kind == "bare" else Prefer)(args, name)
            for i in range(args.warmup):
                learners[name].step(ids[i], scores[i])
        learner = learners[name]
        started = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.steps):
            loss = learner.step(ids[i], scores[i])
        connection.send((time.perf_counter() - started, loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", default=",".join(OBJECTIVE_NAMES))
    parser.add_argument("--task", default="pii", help="whose objective hyperparameters (threshold, alpha, beta)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before a learner's first measurement")
    parser.add_argument("--repeats", type=int, default=5, help="alternating pairs per objective")
    parser.add_argument(
        "--no-keep-freed-memory", action="store_true", help="prefer worker: runtime.keep_freed_memory=false"
    )
    parser.add_argument(
        "--bare-keep-freed-memory", action="store_true", help="bare worker: the same allocator setting as prefer's"
    )
    args = parser.parse_args()
    names = args.objectives.split(",")
    unknown = set(names) - set(OBJECTIVE_NAMES)
    if unknown:
        parser.error(f"--objectives: unknown {sorted(unknown)}")

    import torch
    import transformers

    context = multiprocessing.get_context("spawn")
    connections = {}
    processes = []
    for kind in ("bare", "prefer"):
        ours, theirs = context.Pipe()
        process = context.Process(target=worker, args=(kind, args, theirs), daemon=True)
        process.start()
        connections[kind], processes = ours, processes + [process]
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s); "
        f"GPT-2 {SIZE}, vocabulary {args.vocab}, batch {args.batch} x 256 tokens; "
        f"{args.repeats} alternating pairs of {args.steps} steps per objective after {args.warmup} warm-up steps"
    )
    times = {name: {"bare": [], "prefer": []} for name in names}
    for repeat in range(args.repeats):
        for index, name in enumerate(names):
            order = ("bare", "prefer") if (repeat + index) % 2 == 0 else ("prefer", "bare")
            for kind in order:
                connections[kind].send(name if kind == "prefer" else "mle")
                elapsed, _ = connections[kind].recv()
                times[name][kind].append(elapsed)
    for connection in connections.values():
        connection.send(None)
    for process in processes:
        process.join()

    tokens = args.steps * args.batch * 256
    mle = times.get("mle", {}).get("prefer")
    for name in names:
        bare, ours = times[name]["bare"], times[name]["prefer"]
        ratios = [b / p for b, p in zip(bare, ours)]
        line = (
            f"  {name:<12} prefer {tokens / statistics.median(ours):7.0f} tok/s, "
            f"bare {tokens / statistics.median(bare):7.0f} tok/s; "
            f"prefer/bare min {min(ratios):.3f} median {statistics.median(ratios):.3f}"
        )
        if mle is not None and name != "mle":
            against = [p / m for p, m in zip(ours, mle)]
            line += f"; step time / mle's min {min(against):.3f} median {statistics.median(against):.3f}"
        print(line)


if __name__ == "__main__":
    main()
