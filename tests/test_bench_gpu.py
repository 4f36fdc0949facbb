"""bench/gpu.py is prepared on the CPU for a GPU this project is lent only by chance: its eager paths run here on
a 2-layer model, so a session that gets a GPU finds a script that works (compilation is left to that run)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_on_the_cpu_and_its_two_loops_and_two_samplers_agree(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--loops",
               "hf eager,prefer eager", "--batch", "2", "--steps", "1", "--warmup", "1", "--rounds", "2",
               "--sample-batch", "3", "--new-tokens", "8", "--pairs", "1", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    loops = report["training_step"]["loops"]
    assert set(loops) == {"hf eager", "prefer eager"}
    assert all(len(entry["times"]) == 2 and entry["tokens_per_s"] > 0 for entry in loops.values())
    # same weights, same batch, both bf16 autocast: the same loss up to bf16 rounding of the logits (~1e-2 here)
    assert abs(loops["hf eager"]["first_loss"] - loops["prefer eager"]["first_loss"]) < 0.05
    for prompt in ("prompt_1", "prompt_64"):
        assert report["sampling"][prompt]["greedy_rows_equal"] == 3  # greedy prefer equals greedy generate
    assert "training step: GPT-2 2x64" in result.stdout and "speed-up" in result.stdout
