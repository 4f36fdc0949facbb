"""Step statistics and the metrics log (metrics.jsonl + TensorBoard)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.distributed as torch_dist

from prefer.errors import PreferError
from prefer.files import write_error, write_text_atomic
from prefer.training.distributed import (
    Distributed,
)


def accumulate_stats(totals: dict[str, float], stats: dict[str, torch.Tensor], *, fraction: float) -> None:
    """Fold one micro-batch's stats into the optimizer step's. Loss terms (keys ending in `loss`) were normalised
    by the whole step's token count, so they are shares that add up; every other stat is a mean over its own
    micro-batch, weighted by that micro-batch's `fraction` of the step."""
    if not stats:
        return
    # One read of all the stats (one device sync per micro-batch, not one per stat), the same floats as .item().
    # float64 holds every float32 and integer stat exactly.
    values = torch.stack([torch.as_tensor(v).detach().reshape(()).double() for v in stats.values()]).tolist()
    for key, value in zip(stats, values):
        share = value if key.endswith("loss") else value * fraction
        totals[key] = totals.get(key, 0.0) + share


def average_across_ranks(totals: dict[str, float], dist: Distributed) -> dict[str, float]:
    """Each rank saw its share of the global batch; the logged step stats are the mean over ranks."""
    if dist.world_size == 1:
        return totals
    keys = sorted(totals)
    values = torch.tensor([totals[k] for k in keys], dtype=torch.float64)
    torch_dist.all_reduce(values)
    return {k: v / dist.world_size for k, v in zip(keys, values.tolist())}


def _metrics_lines(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A half-written last line (a run killed while appending) is dropped; any
    other unreadable line is a PreferError naming it."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not an object with an integer step")
        except ValueError as error:
            if number == len(lines):
                break  # the kill landed mid-append: the step is about to be logged again
            raise PreferError(f"{path}:{number}: not a metrics record ({error})") from None
        records.append(record)
    return records


class MetricsLog:
    """Every logged scalar goes to `metrics.jsonl` (one JSON object per step) and to TensorBoard.

    Idempotent by (step, keys): a record whose step already holds a record with the same keys (a resumed run
    re-running its last checkpointed step's final evaluation) is not written twice."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        self._logged: set[tuple[int, tuple[str, ...]]] = set()
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # Drop what the killed run logged after its last checkpoint: those steps are about to run again.
            kept = [record for record in _metrics_lines(self.path) if record["step"] <= resume_step]
            write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))
            self._logged = {(r["step"], tuple(sorted(k for k in r if k != "step"))) for r in kept}
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: (float(v) if not isinstance(v, (int, str)) else v) for k, v in values.items()}
        key = (step, tuple(sorted(values)))
        if key in self._logged:
            return
        self._logged.add(key)
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, **values}) + "\n")
        except OSError as error:
            raise write_error(self.path, error) or error from None
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return _metrics_lines(path) if path.exists() else []
