"""bench/gpu.py is prepared on the CPU for a GPU this project is lent only by chance: its eager paths run here on
a 2-layer model with a 512-token vocabulary, so a session that gets a GPU finds a script that works (compilation
is left to that run)."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_runs_on_the_cpu_and_its_two_loops_and_two_samplers_agree(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu.json"
    argv = ["gpu.py", "--device", "cpu", "--tiny", "--loops", "hf eager,prefer eager", "--batch", "2",
            "--steps", "1", "--warmup", "1", "--rounds", "2", "--sample-batch", "3", "--new-tokens", "8",
            "--pairs", "1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    _load_bench().main()
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    loops = report["training_step"]["loops"]
    assert set(loops) == {"hf eager", "prefer eager"}
    assert all(len(entry["times"]) == 2 and entry["tokens_per_s"] > 0 for entry in loops.values())
    # same weights, same batch, both bf16 autocast: the same loss up to bf16 rounding of the logits (~1e-2 here)
    assert abs(loops["hf eager"]["first_loss"] - loops["prefer eager"]["first_loss"]) < 0.05
    for prompt in ("prompt_1", "prompt_64"):
        assert report["sampling"][prompt]["greedy_rows_equal"] == 3  # greedy prefer equals greedy generate
    assert "training step: GPT-2 2x64" in printed and "speed-up" in printed
