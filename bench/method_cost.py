"""Wall time, CPU time and peak memory of each preference method, and its episodes/s against PPO's, in one run.

    OMP_NUM_THREADS=1 python bench/method_cost.py [--size medium-cpu] [--iterations 3] [--new-tokens 32]
        [--methods ppo,ppo-lora-shared,rloo,grpo,dpo,listwise] [--threads 1] [--device cpu]

Everything is built here, nothing is downloaded: a randomly initialised GPT-2 of `--size` (`medium-cpu` by default:
6 layers, width 384, about 11M parameters, so that weights, gradients and Adam moments rather than the Python/torch
baseline dominate memory) with a BPE trained on word lists is saved as the "SFT" model; a reward model is that
trunk with a fresh scalar head, saved the way `prefer reward` writes one (an untrained head: speed and memory do not
depend on what it learned); 64 prompts and `8 x iterations` K = 4 rankings of ~`--new-tokens`-token responses are
written as JSONL. Then each method runs as its own `python -m prefer ...` process, the CLI a user runs:

    ppo              prefer ppo  train.batch_size=32 train.minibatch_size=16 reward.model=RM (critic from the RM)
    ppo-lora         prefer ppo  ... lora.r=8                        (policy and reference share one trunk)
    ppo-lora-shared  prefer ppo  ... lora.r=8 value_trunk=shared     (policy, reference and critic: one trunk)
    rloo, grpo       prefer grpo algorithm=rloo|grpo group.size=4 train.batch_size=8 (8 prompts x 4 = 32)
    dpo, listwise    prefer dpo  dpo.loss=dpo|listwise train.batch_size=4 (4 rankings x K = 4 = 16 responses a step)

Matched work: every method trains on 32 sequences per iteration (PPO: 32 episodes; RLOO/GRPO: 8 prompts x 4;
DPO: 8 rankings x 4 responses), 16 per optimizer step, one pass, for `--iterations` iterations; the RL methods
sample up to `--new-tokens` tokens per episode and score them with the reward model. DPO's rate counts ranked
responses (its comparisons/s: pairs are C(4, 2) = 6 per ranking for `dpo`; `listwise` uses the whole ranking).

Measurement: each child is started with subprocess.Popen and reaped with os.wait4(pid), whose rusage is that child's
own (ru_maxrss: its peak resident set, KiB on Linux; ru_utime + ru_stime: its CPU seconds), unlike
getrusage(RUSAGE_CHILDREN), whose ru_maxrss is the largest over all children so far. Wall time runs from Popen to
wait4, imports and model loading included (what a user waits for). A "baseline" child that only imports the CLI and
the three stage modules gives the fixed cost: "over baseline" is the method's peak RSS minus the baseline's, "stage
CPU s" its CPU seconds minus the baseline's (other jobs on a shared machine inflate wall time, not CPU time). The
children get OMP_NUM_THREADS=`--threads` (1 by default, like the tests on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "the cat sat on a mat and dog ran to red sun while blue trees grew over old stone road near lamp "
    "river field light small green house under window apple banana sky java"
).split()
K = 4
EPISODES = 32  # per iteration, every method
MINIBATCH = 16  # sequences per optimizer step, every method

# method -> (subcommand, overrides, trunks resident (what), trunks trained in full: gradients + 2 Adam moments)
METHODS: dict[str, tuple[str, list[str], str, int]] = {
    "ppo": ("ppo", [], "4: policy, reference, value, RM", 2),
    "ppo-lora": ("ppo", ["lora.r=8"], "3: policy=reference, value, RM", 0),
    "ppo-lora-shared": ("ppo", ["lora.r=8", "value_trunk=shared"], "2: policy=reference=value, RM", 0),
    "rloo": ("grpo", ["algorithm=rloo"], "3: policy, reference, RM", 1),
    "grpo": ("grpo", ["algorithm=grpo"], "3: policy, reference, RM", 1),
    "dpo": ("dpo", ["dpo.loss=dpo"], "2: policy, reference", 1),
    "listwise": ("dpo", ["dpo.loss=listwise"], "2: policy, reference", 1),
}
DEFAULT_METHODS = "ppo,ppo-lora-shared,rloo,grpo,dpo,listwise"


def _phrase(rng: random.Random, tokenizer, tokens: int) -> str:
    """Words until the text is `tokens` tokens long (or one word more)."""
    words = []
    while len(tokenizer(" " + " ".join(words))["input_ids"]) < tokens:
        words.append(rng.choice(WORDS))
    return " " + " ".join(words)


def prepare(root: Path, args) -> int:
    """SFT model, reward model, prompts and rankings under `root`; returns the number of parameters of the SFT model."""
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from prefer.data.formats import Comparison, write_jsonl, write_rankings
    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model
    from prefer.models.reward_model import build_reward_model
    from prefer.training import save_model

    transformers.logging.set_verbosity_error()  # the reward model's fresh head is meant to be new
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + "." for _ in range(2000)]
    tokenizer = train_tokenizer(corpus, vocab_size=args.vocab)
    torch.manual_seed(0)
    if args.layers or args.hidden:
        layers, hidden = args.layers or 6, args.hidden or 384
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_layer=layers,
            n_embd=hidden,
            n_head=max(1, hidden // 64),
            n_positions=args.context,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = GPT2LMHeadModel(config)
    else:
        model = build_model(
            args.size, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=args.context
        )
    save_model(root / "sft", model, tokenizer)
    build_reward_model(root / "sft").save(root / "rm", {"bench": "method_cost: untrained head"})
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(64)]
    write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts])
    comparisons = []
    for i in range(EPISODES // K * args.iterations):
        responses = tuple(_phrase(rng, tokenizer, args.new_tokens) for _ in range(K))
        comparisons.append(Comparison(prompts[i % len(prompts)], responses, tuple(rng.sample(range(K), K))))
    write_rankings(root / "rankings.jsonl", comparisons)
    return sum(p.numel() for p in model.parameters())


def command(method: str, root: Path, args) -> list[str]:
    subcommand, extra, _, _ = METHODS[method]
    common = [
        f"out_dir={root / method}",
        f"runtime.device={args.device}",
        "runtime.progress=false",
        "optimizer.lr=1e-4",
    ]
    if subcommand == "dpo":
        values = [
            f"data.rankings={root / 'rankings.jsonl'}",
            f"model.init_from={root / 'sft'}",
            "data.validation_fraction=0",
            "train.epochs=1",
            f"train.batch_size={MINIBATCH // K}",
            "train.eval_every=100000",
            "train.checkpoint_every=100000",
            "eval.kl_samples=0",
        ]
    else:
        values = [
            f"model.init_from={root / 'sft'}",
            f"prompts={root / 'prompts.jsonl'}",
            f"reward.model={root / 'rm'}",
            f"train.iterations={args.iterations}",
            f"train.minibatch_size={MINIBATCH}",
            f"train.checkpoint_every={args.iterations}",
            "train.log_samples=0",
            f"rollout.max_new_tokens={args.new_tokens}",
        ]
        if subcommand == "ppo":
            values += [f"train.batch_size={EPISODES}", "train.epochs=1"]
        else:
            values += [f"train.batch_size={EPISODES // K}", f"group.size={K}", "train.epochs=1"]
    return [sys.executable, "-m", "prefer", subcommand, *common, *values, *extra]


BASELINE = [
    sys.executable,
    "-c",
    "import prefer.cli, prefer.stages.policy_gradient, prefer.stages.dpo, prefer.scorers.reward_model",
]


def measure(argv: list[str], log: Path, env: dict) -> dict:
    """Run one child; its wall seconds, CPU seconds and peak RSS (MiB) from os.wait4's rusage of that child alone."""
    with open(log, "w") as out:
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen, so it does not wait again
    if child.returncode != 0:
        sys.exit(f"method_cost: {' '.join(argv[2:4])} exited with {child.returncode}:\n{log.read_text()[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="medium-cpu", help="a named GPT-2 size (prefer.models.build.MODEL_SIZES)")
    parser.add_argument("--layers", type=int, help="override the size: this many layers (default 6)")
    parser.add_argument("--hidden", type=int, help="override the size: this width (default 384; heads = width/64)")
    parser.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary to train (at most)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3, help=f"iterations of {EPISODES} sequences, every method")
    parser.add_argument("--new-tokens", type=int, default=32, help="RL: max new tokens; DPO: response length")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS / MKL_NUM_THREADS of the children")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", help="write the models and runs here instead of a temporary directory")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if "ppo" not in methods:
        methods.insert(0, "ppo")  # the ratios are against PPO measured in the same run
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        parameters = prepare(root, args)
        baseline = measure(BASELINE, root / "baseline.log", env)
        results = {}
        for method in methods:
            results[method] = measure(command(method, root, args), root / f"{method}.log", env)
            print(f"[method_cost] {method}: {json.dumps({k: round(v, 2) for k, v in results[method].items()})}")
    sequences = EPISODES * args.iterations
    copy_mb = parameters * 4 / 2**20
    header = (
        "method",
        "models resident (trunks)",
        "fp32 copies (est.)",
        "wall s",
        "CPU s",
        "seq/s",
        "vs PPO",
        "seq/stage CPU s",
        "vs PPO",
        "peak RSS MiB",
        "over baseline MiB",
        "vs PPO",
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print(
        f"| baseline (imports only) | 0 | 0 | {baseline['wall_s']:.1f} | {baseline['cpu_s']:.1f} | - | - | - | - | "
        f"{baseline['peak_mb']:.0f} | 0 | - |"
    )
    ppo = results["ppo"]
    ppo_over = ppo["peak_mb"] - baseline["peak_mb"]
    ppo_rate, ppo_cpu_rate = sequences / ppo["wall_s"], sequences / (ppo["cpu_s"] - baseline["cpu_s"])
    for method, r in results.items():
        _, _, resident, trained = METHODS[method]
        copies = int(resident.split(":")[0]) + 3 * trained  # weights + (gradient, 2 Adam moments) of trained trunks
        rate, cpu_rate = sequences / r["wall_s"], sequences / (r["cpu_s"] - baseline["cpu_s"])
        over = r["peak_mb"] - baseline["peak_mb"]
        print(
            f"| {method} | {resident} | {copies} ({copies * copy_mb:.0f} MiB) | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{rate:.2f} | {rate / ppo_rate:.2f}x | {cpu_rate:.2f} | "
            f"{cpu_rate / ppo_cpu_rate:.2f}x | {r['peak_mb']:.0f} | {over:.0f} | {over / ppo_over:.2f}x |"
        )
    print(
        f"({parameters / 1e6:.1f}M-parameter GPT-2 ({copy_mb:.0f} MiB per fp32 copy), {args.iterations} iterations x "
        f"{EPISODES} sequences (RL: episodes of <= {args.new_tokens} new tokens, reward model scored; DPO: ranked "
        f"responses of ~{args.new_tokens} tokens, K = {K}), {MINIBATCH} per optimizer step; {args.device}, "
        f"OMP_NUM_THREADS={args.threads}, {os.cpu_count()} CPUs; peak RSS from os.wait4 per child)"
    )


if __name__ == "__main__":
    main()
