"""Experiment trackers: TensorBoard, trackio, MLflow and Weights & Biases, each through its own library.

`MetricsLog` (prefer.training.metrics) opens the trackers named by `runtime.trackers` on rank 0 and hands each the
same scalars, sample texts and resolved config. Every tracker here has one shape:

    tracker.log(step, scalars)            finite numbers only, keyed by metric name
    tracker.log_text(tag, text, step)     a sample table (markdown)
    tracker.state                         what `trackers.json` keeps so that --resume continues the same run
    tracker.resumed                       True: it continues a run that already holds the killed run's points
    tracker.purges                        True: on resume it drops the points after the checkpoint by itself
    tracker.close()

Where each one writes is its library's own setting (docs/trackers.md): MLFLOW_TRACKING_URI, WANDB_MODE/WANDB_DIR,
TRACKIO_DIR. W&B starts offline unless WANDB_MODE says otherwise: prefer sends nothing over the network by itself.
"""

from __future__ import annotations

import abc
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefer.config.common import TRACKERS
from prefer.errors import PreferError

__all__ = ["TRACKERS", "Tracker", "check_trackers", "open_tracker", "flatten_config"]

PROJECT = "prefer"  # the experiment / project name unless the library's own variable names another
_INSTALL = "pip install 'prefer[trackers]'"
# tracker -> (modules it needs, the pip command for them alone)
_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "pip install tensorboard"),
    "trackio": (("trackio",), "pip install trackio"),
    "mlflow": (("mlflow",), "pip install mlflow-skinny sqlalchemy alembic"),
    "wandb": (("wandb",), "pip install wandb"),
}
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow database stores: need sqlalchemy and alembic


def _mlflow_needs_database() -> bool:
    """MLflow's default store (no MLFLOW_TRACKING_URI) is sqlite:///mlflow.db: a database store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return not uri or uri.split(":", 1)[0].split("+", 1)[0] in _SQL_SCHEMES


def check_trackers(names: Iterable[str]) -> None:
    """PreferError (one line, naming the pip command) for an unknown tracker or one whose package is missing.
    Cheap (finds modules without importing them): stages call it first, before any model loads."""
    for name in names:
        if name not in _PACKAGES:
            raise PreferError(f"config: runtime.trackers: unknown tracker {name!r}: choose from {', '.join(TRACKERS)}")
        modules, pip = _PACKAGES[name]
        if name == "mlflow" and _mlflow_needs_database():
            modules = (*modules, "sqlalchemy", "alembic")
        missing = [module for module in modules if importlib.util.find_spec(module) is None]
        if missing:
            raise PreferError(
                f"config: runtime.trackers: {name} needs the {', '.join(missing)} package"
                f"{'s' if len(missing) > 1 else ''}, not installed: {_INSTALL} (or {pip})"
            )


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"optimizer.lr": 3e-4, ...}, for trackers whose parameters are flat (MLflow)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _started(name: str, error: Exception) -> PreferError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return PreferError(f"runtime.trackers: {name} could not start a run ({type(error).__name__}: {first})")


class Tracker(abc.ABC):
    """One tracker's run (the shape in this module's docstring)."""

    name = ""
    resumed = False
    purges = False
    state: dict = {}

    @abc.abstractmethod
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    @abc.abstractmethod
    def log_text(self, tag: str, text: str, step: int) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    """Event files in <run_dir>/tensorboard; on resume, `purge_step` drops the events logged after the checkpoint,
    so this one takes every point again."""

    name = "tensorboard"
    purges = True

    def __init__(self, run_dir: Path, *, config: dict | None, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.resumed = resume_step is not None and (run_dir / "tensorboard").is_dir()
        # purge_step drops the events at steps >= it: the checkpoint's own step stays (as in metrics.jsonl)
        purge_step = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
        if config is not None and resume_step is None:
            text = json.dumps(config, indent=2, default=str)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: a code block

    def log(self, step, scalars):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def log_text(self, tag, text, step):
        self.writer.add_text(tag, text, step)

    def close(self):
        self.writer.close()


class TrackioTracker(Tracker):
    """A trackio run in the local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio; `trackio show`)."""

    name = "trackio"

    def __init__(self, run_name: str, *, config: dict | None, state: dict | None):
        import trackio

        self._trackio = trackio
        state = state or {}
        project = state.get("project", PROJECT)
        try:
            self.run = trackio.init(
                project=project,
                name=state.get("name", run_name),
                config=config,
                resume="allow" if state else "never",
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )
        except Exception as error:
            raise _started(self.name, error) from None
        self.resumed = bool(state) and self.run.id == state.get("id")  # else the run is gone from the store
        self.state = {"project": project, "name": self.run.name, "id": self.run.id}

    def log(self, step, scalars):
        self.run.log(scalars, step=step)

    def log_text(self, tag, text, step):
        self.run.log({tag: self._trackio.Markdown(text)}, step=step)

    def close(self):
        if self._trackio.context_vars.current_run.get() is self.run:
            self._trackio.finish()  # finishes the run and clears trackio's current run (else atexit finishes it again)
        else:
            self.run.finish()


_MLFLOW_BAD_KEY = re.compile(r"[^\w\-. :/]")  # MLflow names: alphanumerics, _ - . space : /


class MLflowTracker(Tracker):
    """An MLflow run (MlflowClient, no global active run) in MLflow's store: MLFLOW_TRACKING_URI, or MLflow's
    default sqlite:///mlflow.db in the working directory (the full `mlflow` package's `mlflow ui` shows it). The
    config is the run's parameters, flattened to dotted keys; sample tables are text artifacts <tag>/step_<step>.md."""

    name = "mlflow"

    def __init__(self, run_name: str, *, config: dict | None, state: dict | None):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient()
            uri = self.client.tracking_uri
            run_id = (state or {}).get("run_id") if (state or {}).get("tracking_uri") == uri else None
            if run_id is not None:
                try:
                    self.client.get_run(run_id)
                    self.client.update_run(run_id, status="RUNNING")
                    self.resumed = True
                except MlflowException:
                    run_id = None  # gone from the store: a new run, backfilled
            if run_id is None:
                experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
                experiment = self.client.get_experiment_by_name(experiment_name)
                experiment_id = (
                    experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
                )
                run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            self.run_id = run_id
            self.state = {"run_id": run_id, "tracking_uri": uri}
            if config is not None:
                self._log_params(flatten_config(config))
        except MlflowException as error:
            raise _started(self.name, error) from None

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        held = self.client.get_run(self.run_id).data.params  # a resumed run keeps its parameters (immutable there)
        items = []
        for key, value in params.items():
            key = _MLFLOW_BAD_KEY.sub("_", key)
            if key in held:
                continue
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            items.append(Param(key, text[:MAX_PARAM_VAL_LENGTH]))
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log(self, step, scalars):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_BAD_KEY.sub("_", key), value, now, step) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_text(self, tag, text, step):
        self.client.log_text(self.run_id, text, f"{_MLFLOW_BAD_KEY.sub('_', tag)}/step_{step:08d}.md")

    def close(self):
        self.client.set_terminated(self.run_id, "FINISHED")


class WandbTracker(Tracker):
    """A Weights & Biases run, offline unless WANDB_MODE names another mode (`wandb sync <dir>` uploads an offline
    run later), in <WANDB_DIR or the run directory>/wandb/. Every point carries `step`, the x-axis of every metric
    (define_metric), so that points are kept whatever order they come in."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, *, config: dict | None, state: dict | None):
        import wandb

        self._table = wandb.Table
        self.resumed = bool(state)
        run_id = (state or {}).get("id")  # None: W&B makes one up
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", PROJECT),
                name=run_name,
                id=run_id,
                resume="allow" if run_id else None,
                config=config,
                mode=os.environ.get("WANDB_MODE", "offline"),
                # read here, not once per process as W&B's settings singleton does: each run its own
                dir=os.environ.get("WANDB_DIR") or str(run_dir),
                reinit="create_new",
                settings=wandb.Settings(console="off"),
            )
        except Exception as error:
            raise _started(self.name, error) from None
        self.run.define_metric("step", hidden=True)
        self.run.define_metric("*", step_metric="step")
        self.state = {"id": self.run.id}

    def log(self, step, scalars):
        self.run.log({"step": step, **scalars})

    def log_text(self, tag, text, step):
        self.run.log({"step": step, tag: self._table(columns=["step", "text"], data=[[step, text]])})

    def close(self):
        self.run.finish()


def open_tracker(
    name: str,
    run_dir: Path,
    *,
    run_name: str,
    config: dict | None,
    state: dict | None,
    resume_step: int | None,
) -> Tracker:
    """Start (or, given the `state` a killed run left in trackers.json, continue) the tracker's run."""
    check_trackers([name])
    if name == "tensorboard":
        return TensorBoardTracker(run_dir, config=config, resume_step=resume_step)
    if name == "trackio":
        return TrackioTracker(run_name, config=config, state=state)
    if name == "mlflow":
        return MLflowTracker(run_name, config=config, state=state)
    return WandbTracker(run_dir, run_name, config=config, state=state)
