"""Step statistics and the metrics log (metrics.jsonl + the experiment trackers: TensorBoard, trackio, MLflow,
W&B)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as torch_dist

from prefer.errors import PreferError
from prefer.files import write_error, write_text_atomic
from prefer.run_dir import metrics_lines
from prefer.training.distributed import (
    Distributed,
)
from prefer.training.trackers import TensorBoardTracker, Tracker, check_trackers, open_tracker


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


def _record_key(record: dict) -> tuple[int, tuple[str, ...]]:
    return record["step"], tuple(sorted(k for k in record if k != "step"))


TRACKERS_STATE = "trackers.json"  # in the run directory: each tracker's run id, so that --resume continues it


def _read_tracker_state(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise PreferError(f"{path}: not the trackers' state ({error}); delete it to start new tracker runs") from None
    return state if isinstance(state, dict) else {}


class MetricsLog:
    """Every logged scalar goes to `metrics.jsonl` (one JSON object per step) and to each experiment tracker of
    `trackers` (prefer.training.trackers: tensorboard, trackio, mlflow, wandb), which also get the sample texts
    (`log_text`) and `config` (the resolved run config) as the run's parameters. Only where `enabled` (rank 0).

    Idempotent by (step, keys): a record whose step already holds a record with the same keys (a resumed run
    re-running its last checkpointed step's final evaluation) is not written twice.

    Resume (`resume_step`, the checkpoint's step) adds no duplicate point anywhere: metrics.jsonl drops what the
    killed run logged after the checkpoint and TensorBoard purges it (those steps run again). trackio, MLflow and
    W&B continue the killed run (its id is kept in `trackers.json`) and cannot delete points, so the steps it logged
    after the checkpoint (the records metrics.jsonl drops) are not sent to them again; a tracker that starts a new
    run on resume (newly named, or its run gone) first receives the kept records."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        trackers: Sequence[str] = ("tensorboard",),
        config: dict | None = None,
        name: str | None = None,
    ):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None  # TensorBoard's SummaryWriter, when tensorboard is one of the trackers
        self.trackers: list[Tracker] = []
        self._logged: set[tuple[int, tuple[str, ...]]] = set()
        self._replayed: set[tuple[int, tuple[str, ...]]] = set()  # logged by the killed run after its checkpoint
        self._replayed_until: int | None = None
        if not enabled:
            return
        check_trackers(trackers)
        state_path = run_dir / TRACKERS_STATE
        saved = _read_tracker_state(state_path) if resume_step is not None else {}
        kept: list[dict] = []
        if resume_step is not None and self.path.exists():
            # Drop what the killed run logged after its last checkpoint: those steps are about to run again.
            records = metrics_lines(self.path)
            kept = [record for record in records if record["step"] <= resume_step]
            dropped = [record for record in records if record["step"] > resume_step]
            write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))
            self._logged = {_record_key(r) for r in kept}
            self._replayed = {_record_key(r) for r in dropped}
            self._replayed_until = max((r["step"] for r in dropped), default=None)
        elif self.path.exists():
            self.path.unlink()
        try:
            for tracker_name in trackers:
                tracker = open_tracker(
                    tracker_name,
                    run_dir,
                    run_name=name or Path(run_dir).resolve().name,
                    config=config,
                    state=saved.get(tracker_name),
                    resume_step=resume_step,
                )
                self.trackers.append(tracker)
                if not tracker.resumed:
                    for record in kept:  # a new run on resume: the points before the checkpoint first
                        if scalars := _scalars(record):
                            tracker.log(record["step"], scalars)
        except BaseException:
            self.close()
            raise
        self.writer = next((t.writer for t in self.trackers if isinstance(t, TensorBoardTracker)), None)
        states = {tracker.name: tracker.state for tracker in self.trackers if tracker.state}
        if states or state_path.exists():
            write_text_atomic(state_path, json.dumps({**saved, **states}, indent=2) + "\n")

    def _sends(self, tracker: Tracker, step: int, key: tuple[int, tuple[str, ...]] | None = None) -> bool:
        """Whether `tracker` takes this point: not when it continues the killed run and that run logged it."""
        if not tracker.resumed or tracker.purges:
            return True
        if key is not None:
            return key not in self._replayed
        return self._replayed_until is None or step > self._replayed_until

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: (float(v) if not isinstance(v, (int, str)) else v) for k, v in values.items()}
        # JSON has no NaN or Infinity (json.dumps would write them, and strict readers refuse the file): null
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
        key = (step, tuple(sorted(values)))
        if key in self._logged:
            return
        self._logged.add(key)
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, **values}, allow_nan=False) + "\n")
        except OSError as error:
            raise write_error(self.path, error) or error from None
        scalars = _scalars(values)
        if scalars:
            for tracker in self.trackers:
                if self._sends(tracker, step, key):
                    tracker.log(step, scalars)

    def log_text(self, tag: str, text: str, step: int) -> None:
        """A text (markdown: the RL stages' sample tables) to every tracker, under `tag` at `step`. metrics.jsonl
        holds no text (samples.jsonl does)."""
        if not self.enabled:
            return
        for tracker in self.trackers:
            if self._sends(tracker, step):
                tracker.log_text(tag, text, step)

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


def _scalars(values: dict) -> dict[str, float]:
    """The finite numbers of a record, for the trackers (strings and nulls stay in metrics.jsonl)."""
    return {k: v for k, v in values.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
