"""What the benchmarks against TRL share (bench/ppo_vs_trl.py, bench/grpo_vs_trl.py): each side runs in a process
of its own (TRL in its own environment, without prefer on its path), reports one JSON line, and the rate counts the
iterations after the first (allocation and autograd warm-up)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def run_side(command: list[str], kind: str, extra_env: dict[str, str] | None = None) -> dict:
    """Run one side's child process (`kind`: "prefer" or "trl") offline, one thread unless OMP_NUM_THREADS says
    otherwise; its last stdout line is its JSON result. A failed run stops the benchmark with its stderr's tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    env.setdefault("OMP_NUM_THREADS", "1")
    if kind == "trl":
        env.pop("PYTHONPATH", None)  # TRL's environment does not need prefer
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def trl_versions(python: str, probe: str, what: str, extra_env: dict[str, str] | None = None) -> str | None:
    """'trl X, transformers Y' from running `probe` (which prints the two versions) in TRL's interpreter, or None
    after printing why TRL cannot run (`what`: the class the probe imports)."""
    if not Path(python).exists():
        print(f"TRL not available: no interpreter at {python} (make one: see docs/benchmarks.md, PPO against TRL)")
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (extra_env or {})
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"TRL not available: {python} cannot import {what}: {last}")
        return None
    trl, transformers = done.stdout.split()
    return f"trl {trl}, transformers {transformers}"


def steady_rate(result: dict, episodes: int) -> float:
    """Episodes per second over the iterations after the first."""
    steady = result["iteration_s"][1:]
    return episodes * len(steady) / sum(steady)
