"""GRPO against TRL's GRPOTrainer on SmolLM2-135M-Instruct with LoRA: episodes/s of `prefer grpo` (and of
`prefer ppo algorithm=rloo`, and PPO with `value_trunk=shared`) and of TRL on the same model, prompts and settings,
with both sides' iteration time broken down.

    python bench/grpo_vs_trl.py [--iterations 3] [--prompts 4] [--group 4] [--new-tokens 32] [--repeats 3]
                                [--runs grpo,rloo,ppo-shared,trl] [--lora-r 8] [--lr 1e-5]
                                [--trl-python /work/trl-venv/bin/python]

The model is prefer's named offline source `smollm2-135m-instruct` (prefer.models.sources: a GGUF file converted
once into a Hugging Face directory under the model cache), given to both libraries as that directory. Prompts are
chats ({"messages": [...]}) that each library renders with the model's chat template and generation prompt; the
reward is `keyword_reward` below, one plain Python function that prefer calls as `reward:py:THIS_FILE:keyword_reward`
and TRL as a reward function (on the completion's text). Both: LoRA of rank `--lora-r` (alpha 2r, no dropout) on
every attention and MLP projection, fp32, no gradient checkpointing (TRL's defaults are bf16 and checkpointing:
switched off to match prefer's RL loop), `--prompts` prompts x `--group` samples per iteration, one optimizer step
per iteration (minibatch = all episodes), up to `--new-tokens` tokens at temperature 1 (no top-k / top-p), the same
learning rate and a KL coefficient of 0.04 to the adapters-off reference (prefer's GRPO default; TRL's beta default
is 0, which skips the reference forward). PPO runs 16 prompts x 1 sample (the same episodes per iteration).

Each run is its own process (OMP_NUM_THREADS=1 unless set); runs come in `--repeats` rounds, the order flipping
every round. Episodes/s are steady state: the iterations after the first, timed between the ends of consecutive
iterations (prefer: its metrics records; TRL: `on_step_end`). Breakdowns: prefer's own `time/generate`,
`time/score`, `time/logprobs`, `time/update` from metrics.jsonl; TRL's by wrapping its methods (`_generate`,
`_calculate_rewards`, `_get_per_token_logps_and_entropies` without grad = reference/old log-probs; the rest of the
iteration is the update: training forward, backward, optimizer step, logging). If `--trl-python` is missing or
cannot import GRPOTrainer, one line "TRL not available: ..." is printed and prefer is reported alone (exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trl_runs import run_side, steady_rate, trl_versions  # bench/trl_runs.py: the script's folder is on sys.path

MODEL = "smollm2-135m-instruct"
KL_COEF = 0.04
QUESTIONS = [
    "Give me three tips for staying focused while studying.",
    "What is the capital of Australia, and why was it chosen?",
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "How do I boil an egg?",
    "Suggest a name for a small bakery.",
    "Why is the sky blue?",
    "What are the benefits of regular exercise?",
    "Summarize the plot of Cinderella in one paragraph.",
    "How can I improve my handwriting?",
    "Describe a cat to someone who has never seen one.",
    "What should I pack for a weekend hiking trip?",
    "Explain recursion to a ten-year-old.",
    "List three uses of a paperclip.",
    "What is the difference between weather and climate?",
    "Give me a fun fact about octopuses.",
]
KEYWORDS = ("please", "thank", "sure", "happy", "help")


def keyword_reward(texts: list[str]) -> list[float]:
    """The reward both libraries call (higher is better): polite keywords, plus up to 1 for length in words."""
    out = []
    for text in texts:
        lower = text.lower()
        out.append(sum(word in lower for word in KEYWORDS) + min(len(text.split()), 40) / 40)
    return out


def prepare(root: Path) -> Path:
    """The converted model directory (named source) and the chat prompts, written once for every run."""
    from prefer.data.formats import write_jsonl
    from prefer.models.sources import resolve_model_path

    write_jsonl(root / "prompts.jsonl", [{"messages": [{"role": "user", "content": q}]} for q in QUESTIONS])
    return resolve_model_path(MODEL)


# ------------------------------------------------------------------ prefer (this interpreter)


def run_prefer(kind: str, root: Path, model: Path, args) -> dict:
    """prefer's stage (grpo / rloo / ppo with a shared value trunk), times read from its metrics.jsonl."""
    import prefer.stages.policy_gradient as stage
    import prefer.training.run as run
    from prefer.config import PolicyGradientConfig, build_config

    ends: list[float] = []
    log = run.MetricsLog.log

    def log_and_mark(self, *a, **k):
        ends.append(time.perf_counter())
        return log(self, *a, **k)

    run.MetricsLog.log = log_and_mark
    episodes = args.prompts * args.group
    out_dir = root / f"prefer-{kind}-{os.getpid()}"
    overrides = {
        "out_dir": out_dir,
        "model.init_from": model,
        "prompts": root / "prompts.jsonl",
        "reward.scorer": f"reward:py:{Path(__file__).resolve()}:keyword_reward",
        "runtime.progress": False,
        "train.iterations": args.iterations,
        "train.minibatch_size": episodes,
        "train.epochs": 1,
        "rollout.max_new_tokens": args.new_tokens,
        "rollout.temperature": 1.0,
        "kl.coef": KL_COEF,
        "optimizer.lr": args.lr,
        "lora.r": args.lora_r,
        "lora.alpha": 2.0 * args.lora_r,
        "train.checkpoint_every": 10 * args.iterations,  # no checkpoint inside the timed iterations
        "train.log_samples": 0,
    }
    if kind == "ppo-shared":
        overrides |= {"algorithm": "ppo", "value_trunk": "shared", "train.batch_size": episodes}
    else:
        overrides |= {"algorithm": kind, "group.size": args.group, "train.batch_size": args.prompts}
    began = time.perf_counter()
    stage.policy_gradient(build_config(PolicyGradientConfig, overrides))
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "time/update" in r]
    phases = {name: statistics.mean(r[f"time/{name}"] for r in records[1:]) for name in PREFER_PHASES}
    return {
        "iteration_s": [b - a for a, b in zip([began, *ends], ends)],  # the first includes loading the model
        "wall_s": time.perf_counter() - began,
        "phases_s": phases,
        "response_length": statistics.mean(r["response/length"] for r in records),
    }


PREFER_PHASES = ("generate", "score", "logprobs", "update")


# ------------------------------------------------------------------ TRL (its own interpreter)

TRL_PROBE = (
    "from trl import GRPOTrainer; import trl, transformers, peft; print(trl.__version__, transformers.__version__)"
)


def run_trl(root: Path, model: Path, args) -> dict:
    """TRL's GRPOTrainer with the same model, prompts, reward and settings; phases by wrapping its methods."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    phases: dict[str, list[float]] = {"generate": [], "score": [], "logprobs": []}
    lengths: list[float] = []

    def timed(name, function):
        def wrapper(*a, **k):
            began = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                if name != "logprobs" or not torch.is_grad_enabled():  # with grad: the training forward
                    phases[name].append(time.perf_counter() - began)

        return wrapper

    generate = GRPOTrainer._generate

    def generate_and_count(self, prompts):
        began = time.perf_counter()
        out = generate(self, prompts)
        phases["generate"].append(time.perf_counter() - began)
        lengths.append(statistics.mean(len(ids) for ids in out[1]))  # (prompt_ids, completion_ids, ...)
        return out

    GRPOTrainer._generate = generate_and_count
    GRPOTrainer._calculate_rewards = timed("score", GRPOTrainer._calculate_rewards)
    GRPOTrainer._get_per_token_logps_and_entropies = timed("logprobs", GRPOTrainer._get_per_token_logps_and_entropies)
    marks: list[float] = []
    iteration_phases: list[dict] = []

    class Marks(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())
            iteration_phases.append({name: sum(times) for name, times in phases.items()})
            for times in phases.values():
                times.clear()

    def reward(completions, **kwargs):  # conversational: each completion is [{"role": "assistant", ...}]
        return keyword_reward([c[-1]["content"] if isinstance(c, list) else c for c in completions])

    tokenizer = AutoTokenizer.from_pretrained(model)
    episodes = args.prompts * args.group
    config = GRPOConfig(
        output_dir=str(root / f"trl-{os.getpid()}"),
        per_device_train_batch_size=episodes,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=args.lr,
        beta=KL_COEF,
        max_steps=args.iterations,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS])
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Marks()],
    )
    began = time.perf_counter()
    marks.append(began)
    trainer.train()
    iteration_s = [b - a for a, b in zip(marks, marks[1:])]
    steady = [
        {**p, "update": s - sum(p.values())} for p, s in zip(iteration_phases[1:], iteration_s[1:])
    ]  # the update: what is left of the iteration (training fwd + bwd, optimizer step, logging)
    return {
        "iteration_s": iteration_s,
        "wall_s": time.perf_counter() - began,
        "phases_s": {name: statistics.mean(p[name] for p in steady) for name in (*phases, "update")},
        "response_length": statistics.mean(lengths),
    }


# ------------------------------------------------------------------ driver


def child(kind: str, root: Path, model: Path, args, python: str) -> dict:
    command = [python, __file__, "--child", kind, "--root", str(root), "--model", str(model)]
    command += [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in SHARED_ARGS]
    return run_side(command, kind)


SHARED_ARGS = ("iterations", "prompts", "group", "new_tokens", "lora_r", "lr")


def report(results: dict[str, list[dict]], args, versions: str | None) -> None:
    import torch
    import transformers

    episodes = args.prompts * args.group
    rates = {kind: [steady_rate(r, episodes) for r in runs] for kind, runs in results.items() if runs}
    print(
        f"{args.repeats} runs each of {args.iterations} iterations x {episodes} episodes ({args.prompts} prompts x "
        f"{args.group}; PPO {episodes} prompts x 1) of <= {args.new_tokens} new tokens, {MODEL}, LoRA r "
        f"{args.lora_r}, lr {args.lr:g}, KL {KL_COEF}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; prefer: torch {torch.__version__}, transformers "
        f"{transformers.__version__}" + (f"; TRL: {versions}" if versions else "")
    )
    print("| run | episodes/s min | median | max | mean response tokens |\n|---|---|---|---|---|")
    for kind, values in rates.items():
        length = statistics.mean(r["response_length"] for r in results[kind])
        print(f"| {kind} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} | {length:.1f} |")
    if "trl" in rates:
        for kind in [k for k in rates if k != "trl"]:
            pairs = [p / t for p, t in zip(rates[kind], rates["trl"])]
            print(
                f"{kind} / TRL (same rounds): min {min(pairs):.2f}x, median {statistics.median(pairs):.2f}x, "
                f"max {max(pairs):.2f}x"
            )
    print("\nseconds per steady iteration, median over runs (share of the iteration)")
    names = ("generate", "score", "logprobs", "update")
    print("| run | iteration | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
    for kind, runs in results.items():
        if not runs:
            continue
        iteration = statistics.median(statistics.mean(r["iteration_s"][1:]) for r in runs)
        cells = []
        for name in names:
            seconds = statistics.median(r["phases_s"][name] for r in runs)
            cells.append(f"{seconds:.2f} ({seconds / iteration:.0%})")
        print(f"| {kind} | {iteration:.2f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="per run; the first is left out (>= 2)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per iteration (GRPO / RLOO)")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", default="grpo,rloo,ppo-shared,trl")
    parser.add_argument("--trl-python", default="/work/trl-venv/bin/python")
    parser.add_argument("--raw", help="also write every run's times to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, model = Path(args.root), Path(args.model)
        result = run_trl(root, model, args) if args.child == "trl" else run_prefer(args.child, root, model, args)
        print(json.dumps(result))
        return
    kinds = args.runs.split(",")
    unknown = set(kinds) - {"grpo", "rloo", "ppo-shared", "trl"}
    if unknown or args.iterations < 2 or args.prompts * args.group > len(QUESTIONS):
        parser.error(f"--runs: grpo,rloo,ppo-shared,trl; --iterations >= 2; --prompts x --group <= {len(QUESTIONS)}")
    versions = trl_versions(args.trl_python, TRL_PROBE, "trl.GRPOTrainer (with peft)") if "trl" in kinds else None
    if versions is None:
        kinds = [k for k in kinds if k != "trl"]
    results: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = prepare(root)
        for repeat in range(args.repeats):  # rounds, the order flipping every round
            for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
                python = args.trl_python if kind == "trl" else sys.executable
                results[kind].append(child(kind, root, model, args, python))
                if args.raw:  # after every run, so that an interrupted bench keeps what it measured
                    Path(args.raw).write_text(json.dumps(results, indent=1))
    report(results, args, versions)


if __name__ == "__main__":
    main()
