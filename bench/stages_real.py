"""Every stage on SmolLM2-135M-Instruct (`model.init_from=smollm2-135m-instruct`): seconds per optimizer step (per
iteration for PPO / GRPO, per 100 generated tokens for sampling) and peak RSS, full finetuning against LoRA.

Each training case is the real command (`python -m prefer STAGE ...`) in a process of its own, so its peak RSS
(`wait4`'s ru_maxrss) is its alone. The stages write one metrics.jsonl line per step as it ends; this script polls
that file (every 10 ms) and times the gaps between the lines of successive steps. The first step (allocator and
autograd warm-up) and the last (which also runs the held-out evaluation) are left out: with `--steps 5` each case
gives 3 timed steps, of which min and median are printed. Sampling loads the model once in its own process and
times `--steps` batches (the first untimed) with eos blocked, so every sequence gets all its tokens.

Sizes (all cases): batch 4, sequences of 128 tokens, LoRA r 16 on every projection, AdamW, fp32 on the CPU:
  sft       4 chat conversations per step, packed into full 128-token blocks
  reward    4 prompts x 2 responses (8 sequences of ~128 tokens) per step
  dpo       4 prompts x 2 responses per step; the reference: a second model (full), the adapters off (LoRA)
  ppo       4 chat prompts, 64 new tokens, one minibatch of 4 episodes; the critic a trunk of its own
            (value_trunk=separate; LoRA: adapters of its own), and with LoRA also on the policy's (shared)
  grpo      4 chat prompts x group 4 = 16 episodes of 64 new tokens, minibatch 16
  pretrain  conditional training from the model (--init-from), 4 blocks of 128 tokens (full only: no LoRA)
  sample    4 chat prompts, 128 new tokens each, KV-cached, temperature 1

    OMP_NUM_THREADS=2 python bench/stages_real.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = "smollm2-135m-instruct"
WORDS = (
    "the sea river mountain quiet bright morning evening garden city road light stone wind small green old new "
    "walks sings reads writes builds finds keeps opens carries remembers under over beside through after before"
).split()
PROMPT_TOPICS = ["the sea", "a city at night", "an old garden", "the mountains", "a long road", "the morning"]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_data(tmp: Path, *, steps: int) -> dict[str, str]:
    """Chat demonstrations (long answers, packed), rankings of ~128-token sequences, chat prompts, a PII corpus."""
    rng = random.Random(0)
    n = 4 * steps + 2  # 4 per step, 10% held out
    demos = [
        {"messages": [{"role": "user", "content": f"Write about {rng.choice(PROMPT_TOPICS)}."},
                      {"role": "assistant", "content": _text(rng, 90)}]}
        for _ in range(n)
    ]  # fmt: skip
    rankings = [
        {"prompt": f"Write about {rng.choice(PROMPT_TOPICS)}:", "responses": [_text(rng, 100), _text(rng, 100)],
         "ranking": [0, 1]}
        for _ in range(n)
    ]  # fmt: skip
    prompts = [{"messages": [{"role": "user", "content": f"Write a paragraph about {t}."}]} for t in PROMPT_TOPICS]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_runs import write_pii_corpus

    files = {"demos": demos, "rankings": rankings, "prompts": prompts[:4]}
    paths = {}
    for name, records in files.items():
        paths[name] = str(tmp / f"{name}.jsonl")
        Path(paths[name]).write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["corpus"] = str(write_pii_corpus(tmp / "corpus.jsonl", documents=200))
    paths["length"] = f"py:{Path(__file__).resolve().parents[1] / 'tests' / 'toy_scorers.py'}:length"
    return paths


def cases(data: dict[str, str], steps: int, tmp: Path) -> list[tuple[str, str, list[str]]]:
    """(stage, mode, command arguments after `prefer`)."""
    common = ["runtime.progress=false", "runtime.trackers=[]", "runtime.device=cpu", f"model.init_from={NAME}"]
    lora = ["lora.r=16"]
    split = "data.validation_fraction=0.1"
    table = []
    for mode, extra in (("full", []), ("lora", lora)):
        table += [
            ("sft", mode, ["sft", f"data.demonstrations={data['demos']}", "data.packing=true", "model.context=128",
                           "train.batch_size=4", "train.epochs=1", split, *extra]),
            ("reward", mode, ["reward", f"data.rankings={data['rankings']}", "model.context=128",
                              "train.batch_size=4", "train.epochs=1", split, *extra]),
            ("dpo", mode, ["dpo", f"data.rankings={data['rankings']}", "model.context=128", "train.batch_size=4",
                           "train.epochs=1", "eval.kl_samples=0", split, *extra]),
            ("ppo", mode, ["ppo", f"prompts={data['prompts']}", f"reward.scorer={data['length']}",
                           "rollout.max_new_tokens=64", f"train.iterations={steps}", "train.batch_size=4",
                           "train.minibatch_size=4", *extra]),
            ("grpo", mode, ["grpo", f"prompts={data['prompts']}", f"reward.scorer={data['length']}",
                            "rollout.max_new_tokens=64", f"train.iterations={steps}", "train.batch_size=4",
                            "group.size=4", "train.minibatch_size=16", *extra]),
        ]  # fmt: skip
    table.insert(9, ("ppo", "lora, shared trunk", [*table[8][2], "value_trunk=shared"]))
    table.append(
        ("pretrain", "full", ["pretrain", "data.task=pii", f"data.source={data['corpus']}",
                              f"data.cache_dir={tmp / 'cache'}", "data.workers=1", "data.max_bytes=null",
                              "objective.name=conditional", "model.context=128", f"train.tokens={steps * 4 * 128}",
                              "train.batch_size=4", "train.eval_blocks=4", "optimizer.lr=1e-4"])
    )  # fmt: skip
    return [(stage, mode, [*args, *(c for c in common if c.split("=")[0] not in _keys(args))])
            for stage, mode, args in table]  # fmt: skip


def _keys(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if "=" in a}


def _spawn(argv: list[str], out: Path, metrics: Path | None = None) -> tuple[dict[int, float], int, float]:
    """Run argv to its end (stdout and stderr to files in `out`): (arrival time of each step's first metrics line,
    the process's own peak RSS in bytes from wait4, wall seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    arrivals: dict[int, float] = {}
    seen = 0
    start = time.perf_counter()
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # reaped here, not by Popen: its rusage is ours
            if metrics is not None and metrics.exists():
                for line in metrics.read_text().splitlines()[seen:]:
                    if not line.endswith("}"):
                        break  # a line being written: read it next time
                    arrivals.setdefault(json.loads(line)["step"], time.perf_counter())
                    seen += 1
            if pid:
                break
            time.sleep(0.01)
    process.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{argv[2:4]} failed ({code}):\n{(out / 'stderr.txt').read_text()[-2000:]}")
    return arrivals, usage.ru_maxrss * 1024, wall


def _run(args: list[str], out: Path) -> tuple[list[float], int, float]:
    """(seconds between the metrics lines of successive steps 2 .. n-1, peak RSS in bytes, wall seconds)."""
    argv = [sys.executable, "-m", "prefer", *args, f"out_dir={out / 'run'}"]
    arrivals, peak, wall = _spawn(argv, out, out / "run" / "metrics.jsonl")
    times = [arrivals[s] for s in sorted(arrivals)]
    gaps = [b - a for a, b in zip(times, times[1:])][:-1]  # no warm-up step, no final evaluation
    if not gaps:
        raise SystemExit(f"{args[0]}: {len(times)} steps logged; too few to time one (raise --steps)")
    return gaps, peak, wall


SAMPLER = r"""
import json, sys, time, torch
from prefer.models.build import load_checkpoint
from prefer.encoding import encode_query
from prefer.sampling import sample
steps, new = int(sys.argv[1]), int(sys.argv[2])
model, tokenizer, _ = load_checkpoint("smollm2-135m-instruct", "cpu")
messages = [json.loads(line)["messages"] for line in open(sys.argv[3])]
prompts = [encode_query(tokenizer, "", m) for m in messages]
eos = tokenizer.eos_token_id
seconds, tokens = [], []
for i in range(steps):
    generator = torch.Generator().manual_seed(i)
    start = time.perf_counter()
    with torch.inference_mode():
        out = sample(model, prompts, max_new_tokens=new, eos_token_id=eos, blocked_token_ids=[eos], temperature=1.0,
                     top_p=1.0, generator=generator)
    seconds.append(time.perf_counter() - start)
    tokens.append(sum(len(o) for o in out))
print(json.dumps({"seconds": seconds[1:], "tokens": tokens[1:]}))
"""


def _sampling(data: dict[str, str], steps: int, out: Path) -> tuple[list[float], int, float]:
    _, peak, wall = _spawn([sys.executable, "-c", SAMPLER, str(steps), "128", data["prompts"]], out)
    result = json.loads((out / "stdout.txt").read_text().strip().splitlines()[-1])
    return [100 * s / t for s, t in zip(result["seconds"], result["tokens"])], peak, wall


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per case; the first and last are not timed")
    parser.add_argument("--only", help="comma-separated stages (default: all)")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (one timed step)")
    import torch
    import transformers

    from prefer.models.sources import resolve_model_path

    resolve_model_path(NAME)  # converted once, before any case is timed
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="stages_real-") as directory:
        tmp = Path(directory)
        data = write_data(tmp, steps=args.steps)
        only = set(args.only.split(",")) if args.only else None
        if only is None or "sample" in only:
            per_100, peak, wall = _sampling(data, args.steps, tmp / "sample")
            rows.append(("sample", "-", "s / 100 tokens", per_100, peak, wall))
            print(f"sample: {min(per_100):.3f} s / 100 tokens, {wall:.0f} s", file=sys.stderr)
        for index, (stage, mode, stage_args) in enumerate(cases(data, args.steps, tmp)):
            if only is not None and stage not in only:
                continue
            gaps, peak, wall = _run(stage_args, tmp / f"case{index}")
            unit = "s / iteration" if stage in ("ppo", "grpo") else "s / step"
            rows.append((stage, mode, unit, gaps, peak, wall))
            print(f"{stage} {mode}: {gaps} {peak / 2**30:.2f} GiB, {wall:.0f} s", file=sys.stderr)
    load_end = os.getloadavg()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {_cpu()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average (1, 5, 15 min) at start "
        f"{', '.join(f'{x:.2f}' for x in load_start)}, at end {', '.join(f'{x:.2f}' for x in load_end)}\n"
    )
    print("| stage | training | unit | min | median | timed | peak RSS | wall (whole command) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for stage, mode, unit, values, peak, wall in rows:
        print(
            f"| {stage} | {mode} | {unit} | {min(values):.2f} | {statistics.median(values):.2f} | {len(values)} | "
            f"{peak / 2**30:.2f} GiB | {wall:.0f} s |"
        )


if __name__ == "__main__":
    main()
