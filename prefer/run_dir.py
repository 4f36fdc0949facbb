"""A run owns its directory: an exclusive lock on `<out_dir>/.lock`, held for the run's life.

The lock is a POSIX record lock (`fcntl.lockf`) on an open file, so the kernel releases it when the process ends
in any way (exit, exception, SIGKILL): a lock file left by a killed run is never stale and does not block
`--resume`. Record locks belong to the process and are not inherited by forked workers (corpus scoring), so an
orphaned worker cannot keep a dead run's directory locked. A
second process that asks for the same directory while a run holds it is refused with one line naming the holder.
Within one process the claim is re-entrant (a stage resumed in the same process, an experiment's runs).

`config_difference` is how `--resume` compares a run's saved config with the requested one (prefer.training.
check_run_dir): any difference refuses, except the keys of RESUME_MAY_CHANGE, which do not change what is trained.

`read_metrics` reads what a run logged (`metrics.jsonl`), here in the torch-free floor so that `prefer report`
reads a run without importing torch.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from pathlib import Path
from typing import Any

from prefer.errors import PreferError
from prefer.files import clean_staging

LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # resolved run directory -> the open file descriptor holding its lock

# Keys (the last part of a dotted name) that `--resume` may change: they do not change what is trained. Anything
# else (seed, batch size, learning rate, budget, precision, data, model, objective, ...) must equal the saved run's.
RESUME_MAY_CHANGE = frozenset(
    {"out_dir", "progress", "device", "workers", "cache_dir", "eval_every", "checkpoint_every", "trackers"}
)


def config_difference(
    saved: Any, requested: Any, *, may_change: frozenset[str] = RESUME_MAY_CHANGE, prefix: str = ""
) -> tuple[str, Any, Any] | None:
    """The first (dotted key, saved value, requested value) where two config dicts differ, skipping `may_change`
    keys; None when they agree."""
    if isinstance(saved, dict) and isinstance(requested, dict):
        for key in [*saved, *(k for k in requested if k not in saved)]:
            if key in may_change:
                continue
            found = config_difference(
                saved.get(key, "<absent>"),
                requested.get(key, "<absent>"),
                may_change=may_change,
                prefix=f"{prefix}{key}.",
            )
            if found is not None:
                return found
        return None
    return None if saved == requested else (prefix.rstrip("."), saved, requested)


def claim_run_dir(run_dir: str | os.PathLike, *, field: str = "out_dir") -> Path:
    """Create `run_dir` if needed, take its lock, and clean the staging directories killed writes left in it.
    PreferError (naming `field`) when it is not a directory, cannot be written, or another run holds it."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise PreferError(f"{field}: {run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PreferError(f"{field}: cannot create {run_dir} ({error.strerror or error})") from None
    key = run_dir.resolve()
    if key in _HELD:
        return run_dir
    lock = run_dir / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise PreferError(f"{field}: {run_dir} is not writable ({error.strerror or error})") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise PreferError(
            f"{field}: {run_dir} is in use by another run (pid {holder}, holding {lock}); wait for "
            "it to finish or choose another out_dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as error:
        os.close(fd)
        raise PreferError(f"{field}: {run_dir} is not writable ({error.strerror or error})") from None
    _HELD[key] = fd
    clean_staging(run_dir)
    return run_dir


def release_run_dir(run_dir: str | os.PathLike) -> None:
    """Give the directory up (the lock file stays; an unlocked lock file means nothing)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


def holds_run_dir(run_dir: str | os.PathLike) -> bool:
    return Path(run_dir).resolve() in _HELD


def releases_run_dirs(function):
    """Decorate a stage: the directories it claimed are given up when it returns or raises (a later process, or
    the same one, may then resume them); the process ending would release them anyway."""

    @functools.wraps(function)
    def stage(*args, **kwargs):
        before = set(_HELD)
        try:
            return function(*args, **kwargs)
        finally:
            for key in set(_HELD) - before:
                release_run_dir(key)

    return stage


def metrics_lines(path: Path) -> list[dict]:
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


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return metrics_lines(path) if path.exists() else []
