"""PPO against TRL's PPOTrainer: episodes/s of `prefer ppo` and of TRL on the same models and batch, with prefer's
iteration time broken down (generation, scoring, policy / reference / value forwards, training).

    python bench/ppo_vs_trl.py [--iterations 4] [--episodes 64] [--new-tokens 32] [--repeats 3]
                               [--minibatch 16] [--size tiny] [--micro N] [--sample-batch N]
                               [--trl-python /work/trl-venv/bin/python]

One random GPT-2 policy (`--size`), a BPE trained on word lists and a reward model (GPT2ForSequenceClassification, 1
label: the policy's trunk and a random head) are written once to a temporary directory (nothing is downloaded). Each
run is its own process at OMP_NUM_THREADS=1 (unless set): prefer's stage `ppo` with this interpreter (the critic
starts from the reward model, as TRL's value model does), and TRL's `PPOTrainer` with `--trl-python`, TRL in its own
virtual environment. If that interpreter is missing or cannot import TRL's PPOTrainer, one line "TRL not available:
..." is printed and prefer is reported alone (exit 0). Both sample `--episodes` responses of up to `--new-tokens`
tokens per iteration at temperature 1, take minibatches of `--minibatch` (16) episodes, one PPO epoch. Each library
keeps its own default generation chunk (prefer: the micro-batch, = minibatch 16; TRL:
local_rollout_forward_batch_size 64) unless `--micro` sets prefer's (train.micro_batch_size, also its sampling
chunk), `--sample-batch` prefer's sampling chunk alone (rollout.sample_batch_size, the update unchanged) and
`--trl-rollout-chunk` TRL's. Episodes/s are steady state: the iterations after the first, timed from the
start of one iteration's sampling to the next (TRL: between `on_step_end` callbacks). Runs come in `--repeats`
pairs, the order flipping every pair; min and median are reported. (TRL, whose batch is per_device_train_batch_size
x gradient_accumulation_steps, accumulates the gradient over all the minibatches: one optimizer step per iteration
where prefer takes one per minibatch; ~4% of prefer's iteration.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trl_runs import run_side, steady_rate, trl_versions  # bench/trl_runs.py: the script's folder is on sys.path

WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree", "lamp", "road", "aa", "red", "sun"]


def prepare(root: Path, size: str) -> None:
    """Policy (= SFT = reference), reward model and prompts, written once for both libraries."""
    import torch

    from prefer.data.formats import write_jsonl
    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model
    from prefer.models.reward_model import build_reward_model
    from prefer.training import save_model

    rng = random.Random(0)
    phrases = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "." for _ in range(400)]
    tokenizer = train_tokenizer(phrases, vocab_size=400)
    torch.manual_seed(0)
    policy = build_model(size, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    save_model(root / "sft", policy, tokenizer)
    torch.manual_seed(1)  # the reward model as `prefer reward` writes one: the SFT trunk and a fresh scalar head
    build_reward_model(root / "sft").save(root / "rm", info={})
    prompts = [f"the {a} {b}" for a in WORDS for b in WORDS][:128]
    write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts])


# ------------------------------------------------------------------ prefer (this interpreter)


def run_prefer(root: Path, args) -> dict:
    """prefer's stage `ppo`, with each phase of the loop timed by wrapping the functions it calls."""
    import prefer.models.value as value
    import prefer.rl.algorithms as algorithms
    import prefer.rl.episodes as episodes
    import prefer.rl.rollout as rollouts
    import prefer.stages.policy_gradient as stage
    import prefer.training.run as run
    from prefer.config import PolicyGradientConfig, build_config

    phases: dict[str, list[float]] = {}
    starts: list[float] = []
    state = {"in_rollout": False, "calls": 0}

    def timed(name, function, mark_start=False):
        def wrapper(*a, **k):
            began = time.perf_counter()
            if mark_start:
                starts.append(began)
            try:
                return function(*a, **k)
            finally:
                phases.setdefault(name, []).append(time.perf_counter() - began)

        return wrapper

    # make_rollout calls policy_logits for the policy, then the reference, then the value model, per chunk
    logits = rollouts.policy_logits

    def policy_logits(model, part):
        name = "old log-probs (policy fwd)" if state["calls"] % 2 == 0 else "reference fwd"
        state["calls"] += 1
        return timed(name, logits)(model, part)

    value_forward = value.ValueModel.forward
    rollouts.policy_logits = policy_logits
    value.ValueModel.forward = lambda self, part: (
        timed("value fwd", value_forward)(self, part) if state["in_rollout"] else value_forward(self, part)
    )
    make_rollout = episodes.make_rollout

    def rollout(*a, **k):
        state["in_rollout"], state["calls"] = True, 0
        try:
            return make_rollout(*a, **k)
        finally:
            state["in_rollout"] = False

    episodes.make_rollout = timed("rollout forwards (total)", rollout)
    episodes.sample_responses = timed("generation", episodes.sample_responses, mark_start=True)
    episodes.score_episodes = timed("scoring (reward model)", episodes.score_episodes)
    algorithms.add_advantages = timed("advantages (KL, GAE)", algorithms.add_advantages)
    algorithms.ppo_backward = timed("training: fwd+bwd", algorithms.ppo_backward)
    algorithms.optimizer_step = timed("training: optimizer step", algorithms.optimizer_step)
    run.save_checkpoint = timed("checkpoint", run.save_checkpoint)
    log = run.MetricsLog.log
    ends: list[float] = []

    lengths: list[float] = []

    def log_and_mark(self, step, record, *a, **k):
        ends.append(time.perf_counter())
        lengths.append(record["response/length"])
        return log(self, step, record, *a, **k)

    run.MetricsLog.log = log_and_mark
    overrides = {
        "out_dir": root / f"prefer-{os.getpid()}",
        "model.init_from": root / "sft",
        "prompts": root / "prompts.jsonl",
        "reward.model": root / "rm",
        "runtime.progress": False,
        "train.iterations": args.iterations,
        "train.batch_size": args.episodes,
        "train.minibatch_size": args.minibatch,
        "train.epochs": 1,
        "rollout.max_new_tokens": args.new_tokens,
        "rollout.temperature": 1.0,
        "train.checkpoint_every": args.iterations,
        "train.log_samples": 0,
    }
    if args.micro:
        overrides["train.micro_batch_size"] = args.micro
    if args.sample_batch:
        overrides["rollout.sample_batch_size"] = args.sample_batch
    began = time.perf_counter()
    stage.ppo(build_config(PolicyGradientConfig, overrides))
    wall = time.perf_counter() - began
    iteration_s = [b - a for a, b in zip(starts, [*starts[1:], ends[-1]])]
    # per-iteration phase times, steady state (without the first iteration), summed per iteration
    steady = {}
    for name, times in phases.items():
        per_iteration = len(times) // args.iterations
        if name == "checkpoint" or per_iteration == 0:
            continue
        steady[name] = sum(times[per_iteration:]) / (args.iterations - 1)
    return {"iteration_s": iteration_s, "wall_s": wall, "phases_s": steady, "response_length": statistics.mean(lengths)}


# ------------------------------------------------------------------ TRL (its own interpreter)

TRL_PROBE = (
    "from trl.experimental.ppo import PPOTrainer; import trl, transformers; "
    "print(trl.__version__, transformers.__version__)"
)


def run_trl(root: Path, args) -> dict:
    """TRL's PPOTrainer on the same models and batch: iteration times from the `on_step_end` callback."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    tokenizer = AutoTokenizer.from_pretrained(root / "sft", padding_side="left")
    prompts = [json.loads(line)["prompt"] for line in (root / "prompts.jsonl").read_text().splitlines()]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
    generation: list[float] = []
    batch_generation = module.batch_generation

    lengths: list[int] = []

    def timed_generation(model, queries, *a, **k):
        began = time.perf_counter()
        query_responses, logits = batch_generation(model, queries, *a, **k)
        generation.append(time.perf_counter() - began)
        lengths.append(query_responses.shape[1] - queries.shape[1])
        return query_responses, logits

    module.batch_generation = timed_generation
    collect_s: list[float] = []  # TRL calls gc.collect() several times per iteration
    collect = module.gc.collect

    class TimedGC:
        @staticmethod
        def collect(*a, **k):
            began = time.perf_counter()
            try:
                return collect(*a, **k)
            finally:
                collect_s.append(time.perf_counter() - began)

    module.gc = TimedGC
    forwards: dict[str, float] = {}  # summed over the run; per iteration below

    def timed_forward(name, function):
        def wrapper(*a, **k):
            began = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                key = name if not torch.is_grad_enabled() else "training fwd (policy+value)"
                forwards[key] = forwards.get(key, 0.0) + time.perf_counter() - began

        return wrapper

    module.forward = timed_forward("reference fwd", module.forward)
    module.get_reward = timed_forward("value + reward model fwd", module.get_reward)
    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    config = PPOConfig(
        output_dir=str(root / f"trl-{os.getpid()}"),
        per_device_train_batch_size=args.micro or args.minibatch,
        gradient_accumulation_steps=args.episodes // (args.micro or args.minibatch),
        num_mini_batches=args.episodes // args.minibatch,
        num_ppo_epochs=1,
        total_episodes=args.iterations * args.episodes,
        response_length=args.new_tokens,
        temperature=1.0,
        local_rollout_forward_batch_size=args.trl_rollout_chunk or 64,
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(root / "sft"),
        ref_model=AutoModelForCausalLM.from_pretrained(root / "sft"),
        reward_model=AutoModelForSequenceClassification.from_pretrained(root / "rm", num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(root / "rm", num_labels=1),
        train_dataset=dataset,
        eval_dataset=dataset,
        callbacks=[Marks()],
    )
    began = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - began
    generation_s = sum(generation[len(generation) // args.iterations :]) / (args.iterations - 1)
    collect_per_iteration = sum(collect_s) / args.iterations
    return {
        "iteration_s": [b - a for a, b in zip(marks, marks[1:])],
        "wall_s": wall,
        "phases_s": {
            "generation": generation_s,
            "gc.collect": collect_per_iteration,
            **{name: seconds / args.iterations for name, seconds in forwards.items()},
        },
        "response_length": statistics.mean(lengths),  # tokens sampled per episode (before truncation at eos)
    }


# ------------------------------------------------------------------ driver


def child(kind: str, root: Path, args, python: str) -> dict:
    command = [
        python,
        __file__,
        "--child",
        kind,
        "--root",
        str(root),
        f"--iterations={args.iterations}",
        f"--episodes={args.episodes}",
        f"--new-tokens={args.new_tokens}",
        f"--minibatch={args.minibatch}",
        f"--micro={args.micro or 0}",
        f"--sample-batch={args.sample_batch or 0}",
        f"--trl-rollout-chunk={args.trl_rollout_chunk or 0}",
    ]
    return run_side(command, kind, {"TRL_EXPERIMENTAL_SILENCE": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4, help="per run; the first is left out (>= 2)")
    parser.add_argument("--episodes", type=int, default=64, help="episodes per iteration")
    parser.add_argument("--minibatch", type=int, default=16, help="episodes per minibatch (divides --episodes)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--micro", type=int, default=0, help="prefer's micro-batch and sampling chunk (0: default)")
    parser.add_argument(
        "--sample-batch", type=int, default=0, help="prefer's rollout.sample_batch_size alone (0: the micro-batch)"
    )
    parser.add_argument("--trl-rollout-chunk", type=int, default=0, help="TRL's rollout chunk (0: its default 64)")
    parser.add_argument("--trl-python", default="/work/trl-venv/bin/python")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_prefer if args.child == "prefer" else run_trl
        print(json.dumps(run(Path(args.root), args)))
        return
    if args.iterations < 2 or args.episodes % args.minibatch:
        parser.error("--iterations must be >= 2 and --episodes a multiple of --minibatch")
    silence = {"TRL_EXPERIMENTAL_SILENCE": "1"}
    versions = trl_versions(args.trl_python, TRL_PROBE, "trl.experimental.ppo.PPOTrainer", silence)
    results: dict[str, list[dict]] = {"prefer": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, args.size)
        for repeat in range(args.repeats):  # alternating pairs, the order flipping every pair
            kinds = ["prefer", "trl"] if versions else ["prefer"]
            for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
                python = sys.executable if kind == "prefer" else args.trl_python
                results[kind].append(child(kind, root, args, python))
    rates = {kind: [steady_rate(r, args.episodes) for r in runs] for kind, runs in results.items()}
    print(
        f"{args.repeats} runs each of {args.iterations} iterations x {args.episodes} episodes of <= {args.new_tokens} "
        f"new tokens, GPT-2 {args.size}, minibatch {args.minibatch}, 1 epoch, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '1')}, {os.cpu_count()} CPUs" + (f"; TRL: {versions}" if versions else "")
    )
    print("| library | episodes/s min | median | max | mean response tokens |\n|---|---|---|---|---|")
    for kind, values in rates.items():
        if values:
            length = statistics.mean(r["response_length"] for r in results[kind])
            print(
                f"| {kind} | {min(values):.1f} | {statistics.median(values):.1f} | {max(values):.1f} | {length:.1f} |"
            )
    if versions:
        pairs = [p / t for p, t in zip(rates["prefer"], rates["trl"])]
        print(
            f"prefer / TRL (alternating pairs): min {min(pairs):.2f}x, median {statistics.median(pairs):.2f}x, "
            f"max {max(pairs):.2f}x"
        )
    # prefer's breakdown: median over runs of each phase's seconds per steady iteration
    names = list(results["prefer"][0]["phases_s"])
    iteration = statistics.median(statistics.mean(r["iteration_s"][1:]) for r in results["prefer"])
    print(f"\nprefer, seconds per steady iteration (median of {args.repeats} runs): {iteration:.3f}")
    print("| phase | s | share |\n|---|---|---|")
    for name in names:
        seconds = statistics.median(r["phases_s"][name] for r in results["prefer"])
        print(f"| {name} | {seconds:.3f} | {seconds / iteration:.0%} |")
    if versions:
        trl_iteration = statistics.median(statistics.mean(r["iteration_s"][1:]) for r in results["trl"])
        print(f"TRL, seconds per steady iteration (median of {args.repeats} runs): {trl_iteration:.3f}")
        print("| phase | s | share |\n|---|---|---|")
        for name in results["trl"][0]["phases_s"]:
            seconds = statistics.median(r["phases_s"][name] for r in results["trl"])
            print(f"| {name} | {seconds:.3f} | {seconds / trl_iteration:.0%} |")
        print("(TRL: generation over the steady iterations; the other phases are means over all iterations)")


if __name__ == "__main__":
    main()
