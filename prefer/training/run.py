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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefer.config import save_config
from prefer.errors import raise_if_interrupted
from prefer.models.saving import save_model
from prefer.run_dir import RESUME_MAY_CHANGE
from prefer.training.checkpoints import check_run_dir, open_run_dir, restore_training, save_checkpoint, set_seed
from prefer.training.distributed import Distributed, gradient_sync, init_distributed
from prefer.training.metrics import MetricsLog, accumulate_stats, average_across_ranks
from prefer.training.optimization import BlockOrder, make_optimizer_and_schedule, micro_batch_size
from prefer.training.trackers import check_trackers

__all__ = ["EpochPlan", "StageRun", "accumulate_gradients", "epoch_record"]


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
        defer_check: bool = False,
    ):
        self.config, self.config_class, self.name, self.resume = config, config_class, name, resume
        self.may_change = may_change
        check_trackers(config.runtime.trackers)  # a missing tracker package: one line, before any work
        self.dist, self.device = init_distributed(config.runtime.device)
        self.run_dir = Path(config.out_dir)
        speaks = self.dist.is_main and (config.runtime.progress or not quiet_without_progress)
        self.say = print if speaks else _silent
        self.log: MetricsLog | None = None
        self.bar = None
        self.total = 0
        self.started = time.perf_counter()
        self.checkpoint = None
        if defer_check:  # the directory is claimed now; the config is compared once it is resolved (`check`)
            open_run_dir(self.run_dir, resume)
        else:
            self.check(config)

    def check(self, config) -> None:
        """With --resume the saved config must equal `config` (except `may_change` keys); then the seed is set.
        Sets `checkpoint`: the one to resume from, or None for a fresh start."""
        self.config = config
        self.checkpoint = check_run_dir(
            self.run_dir, self.config_class, config, self.resume, may_change=self.may_change
        )
        set_seed(config.runtime.seed)

    @property
    def resume_step(self):
        """What `begin`'s start means to the logs: None on a fresh start (they are started over)."""
        return self._start if self.checkpoint is not None else None

    def begin(self, *, start: int, total: int, unit: str = "step", save: bool = True) -> None:
        """Open the metrics log (trimmed to `start` on resume), save the config, start the progress bar."""
        self._start, self.total = start, total
        self.log = MetricsLog(
            self.run_dir,
            enabled=self.dist.is_main,
            resume_step=self.resume_step,
            trackers=self.config.runtime.trackers,
            config=asdict(self.config),
        )
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
        """Whether step `done` ends a period of `every` steps, or the run. Every stage asks at each step's end, so
        this is also where a Ctrl-C that a C extension or a finalizer swallowed is raised again."""
        raise_if_interrupted()
        return done % every == 0 or done == self.total

    def save_checkpoint(self, done: int, **parts) -> None:
        """A resumable checkpoint at step `done` (every rank calls, rank 0 writes): prefer.training.save_checkpoint."""
        save_checkpoint(self.run_dir, done, **parts)

    def close(self) -> None:
        """Close the progress bar and the metrics log (before the final save, which may take a while); the log
        stays usable for a last record."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
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


# ------------------------------------------------------------------ stages that train for epochs over a data file


class EpochPlan:
    """Batch geometry of a stage that draws `batch_size` of its `num_items` (examples, blocks, or prompts with all
    their responses) per optimizer step (all ranks together) for `total_steps` steps, `micro` per forward pass and
    rank, and each step's share of this rank."""

    def __init__(
        self, *, num_items: int, total_steps: int, batch_size: int, micro_batch: int | None, dist: Distributed
    ):
        self.num_items, self.total_steps, self.batch_size, self.dist = num_items, total_steps, batch_size, dist
        self.micro = micro_batch_size(batch_size, micro_batch, dist.world_size)

    @classmethod
    def of(cls, train, num_items: int, dist: Distributed) -> EpochPlan:
        """From a stage's `train` section (epochs, batch_size, micro_batch_size): enough steps for the epochs."""
        return cls(
            num_items=num_items,
            total_steps=max(1, math.ceil(train.epochs * num_items / train.batch_size)),
            batch_size=train.batch_size,
            micro_batch=train.micro_batch_size,
            dist=dist,
        )

    def start(
        self,
        run: StageRun,
        modules,
        *,
        optimizer,
        schedule,
        data_fingerprint: str,
        data_name: str,
        start_step: int = 0,
        restore_modules=None,
    ):
        """AdamW and the warmup + decay schedule over `modules` (`optimizer`, `schedule`: the stage's sections) for
        `total_steps`, already `start_step` steps in (a model continued from a prefer checkpoint's budget), and the
        data order and first step (`restore`; `restore_modules`: the modules the checkpoint's optimizer state is
        for, default `modules`). Returns (optimizer, scheduler, order, step)."""
        optimizer, scheduler = make_optimizer_and_schedule(
            modules, optimizer, schedule, total_steps=self.total_steps, start_step=start_step
        )
        order, step = self.restore(
            run,
            optimizer,
            scheduler,
            data_fingerprint=data_fingerprint,
            data_name=data_name,
            modules=modules if restore_modules is None else restore_modules,
        )
        return optimizer, scheduler, order, step

    def next(self, order: BlockOrder) -> tuple[torch.Tensor, torch.Tensor]:
        """(the next global batch of `order`, this rank's contiguous share of it)."""
        indices = order.next(self.batch_size)
        return indices, indices.view(self.dist.world_size, -1)[self.dist.rank]

    def restore(self, run: StageRun, optimizer, scheduler, *, data_fingerprint: str, data_name: str, modules):
        """(data order, first step): a fresh start, or the checkpoint's optimizer, schedule, RNG and data position
        (its data must be this run's: `data_fingerprint`)."""
        seed = run.config.runtime.seed
        if run.checkpoint is None:
            return BlockOrder(self.num_items, seed=seed), 0
        return restore_training(
            run.checkpoint,
            optimizer,
            scheduler,
            num_items=self.num_items,
            seed=seed,
            data_fingerprint=data_fingerprint,
            data_name=data_name,
            modules=modules,
        )


def accumulate_gradients(
    models: list[torch.nn.Module],
    rows: Sequence,
    micro: int,
    loss_of: Callable,
    *,
    dist: Distributed,
    keys: Sequence[str] | None = None,
) -> dict[str, float]:
    """One optimizer step's gradient: `loss_of(part)` -> (loss, stats) backpropagated for each micro-batch `part` of
    this rank's `rows`, the gradients reduced over the ranks only in the last micro-batch. The loss must already be
    normalised by the whole step (prefer.objectives.common); returns the stats (`keys` of them) weighted by each
    part's share of the rows, averaged over the ranks."""
    totals: dict[str, float] = {}
    for start in range(0, len(rows), micro):
        part = rows[start : start + micro]
        with gradient_sync(models, sync=start + micro >= len(rows)):
            loss, stats = loss_of(part)
            loss.backward()
        accumulate_stats(totals, stats if keys is None else {k: stats[k] for k in keys}, fraction=len(part) / len(rows))
    return average_across_ranks(totals, dist)


def epoch_record(totals: dict[str, float], *, grad_norm: float, scheduler, order: BlockOrder) -> dict[str, float]:
    """A step's metrics: the accumulated stats as train/..., the gradient norm, the learning rate, the epoch."""
    return {
        **{f"train/{k}": v for k, v in totals.items()},
        "train/grad_norm": grad_norm,
        "train/lr": scheduler.get_last_lr()[0],
        "epoch": order.epoch + order.cursor / order.num_blocks,
    }
