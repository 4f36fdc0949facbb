"""The run skeleton every training stage composes: what happens around its loop, written once.

    run = StageRun(config, ConfigClass, resume=resume, name="sft")   # devices, run dir + lock check, seed
    ... load models and data; restore from run.checkpoint; know the first step ...
    run.begin(start=step, total=total_steps, unit="step")            # metrics log, saved config, progress bar
    for step in ...:
        ... the stage's own loop ...
        run.log(done, record)
        if run.due(done, every=config.train.checkpoint_every):
            run.save_checkpoint(done, model=..., ...)
    final = run.finish(model, tokenizer, info=...)                   # bar and log closed, <out_dir>/final written

Composed, not inherited: a stage reads top to bottom as its own loop and calls these where it needs them.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from prefer.config import save_config
from prefer.run_dir import RESUME_MAY_CHANGE
from prefer.training.checkpoints import check_run_dir, save_checkpoint, save_model, set_seed
from prefer.training.distributed import init_distributed
from prefer.training.metrics import MetricsLog

__all__ = ["StageRun"]


def _silent(*args, **kwargs) -> None:
    return None


class StageRun:
    """One training stage's run: `dist`, `device`, `run_dir`, `checkpoint` (None: a fresh start), `say` (print on
    the main process, silent elsewhere or without progress), and after `begin` the metrics `log` and progress bar.

    `may_change`: the config keys `--resume` may change (run_dir.RESUME_MAY_CHANGE, plus a stage's own, e.g. the
    iterations of a constant-schedule RL run, which may be extended)."""

    def __init__(
        self,
        config,
        config_class: type,
        *,
        resume: bool,
        name: str,
        may_change: frozenset[str] = RESUME_MAY_CHANGE,
        quiet_without_progress: bool = True,
    ):
        self.config, self.name = config, name
        self.dist, self.device = init_distributed(config.runtime.device)
        self.run_dir = Path(config.out_dir)
        self.checkpoint = check_run_dir(self.run_dir, config_class, config, resume, may_change=may_change)
        set_seed(config.runtime.seed)
        speaks = self.dist.is_main and (config.runtime.progress or not quiet_without_progress)
        self.say = print if speaks else _silent
        self.log: MetricsLog | None = None
        self.bar = None
        self.total = 0
        self.started = time.perf_counter()

    @property
    def resume_step(self):
        """What `begin`'s start means to the logs: None on a fresh start (they are started over)."""
        return self._start if self.checkpoint is not None else None

    def begin(self, *, start: int, total: int, unit: str = "step", save: bool = True) -> None:
        """Open the metrics log (trimmed to `start` on resume), save the config, start the progress bar."""
        self._start, self.total = start, total
        self.log = MetricsLog(self.run_dir, enabled=self.dist.is_main, resume_step=self.resume_step)
        if save and self.dist.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
        self.bar = tqdm(
            total=total,
            initial=start,
            desc=self.name,
            unit=unit,
            disable=not (self.config.runtime.progress and self.dist.is_main),
        )
        self.started = time.perf_counter()

    def due(self, done: int, *, every: int) -> bool:
        """Whether step `done` ends a period of `every` steps, or the run."""
        return done % every == 0 or done == self.total

    def save_checkpoint(self, done: int, **parts) -> None:
        """A resumable checkpoint at step `done` (every rank calls, rank 0 writes): prefer.training.save_checkpoint."""
        save_checkpoint(self.run_dir, done, **parts)

    def close(self) -> None:
        """Close the progress bar and the metrics log (before the final save, which may take a while)."""
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()

    def finish(self, model, tokenizer, *, info: dict, extra=None) -> Path:
        """Close the bar and log, write `<out_dir>/final` (a plain Hugging Face directory; every rank calls,
        rank 0 writes) and return it."""
        self.close()
        final = self.run_dir / "final"
        save_model(final, model, tokenizer, extra, info)
        return final

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
