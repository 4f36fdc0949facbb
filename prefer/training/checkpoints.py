"""Atomic Hugging Face checkpoints with exact resume (model, optimizer, schedule, RNG, data position); run dirs.
The model directory inside a checkpoint is written by `prefer.models.saving`, as a finished model is."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from prefer.devices import is_main_process, is_sharded, unwrap
from prefer.errors import PreferError
from prefer.files import atomic_path, write_text_atomic
from prefer.models.saving import gather_model, write_model
from prefer.run_dir import RESUME_MAY_CHANGE, config_difference
from prefer.training.optimization import (
    BlockOrder,
)


def restore_training(
    checkpoint: Path,
    optimizer,
    scheduler,
    *,
    num_items: int,
    seed: int,
    data_fingerprint: str,
    data_name: str,
    modules: list[torch.nn.Module] = (),
) -> tuple[BlockOrder, int]:
    """Load optimizer, schedule, RNG and data position from a checkpoint; returns (data order, step). Refuses to
    resume when the data changed (the same position would then mean other examples). `modules`: those the
    optimizer updates (needed to load FSDP2 shards)."""
    state = load_trainer_state(checkpoint)
    if state["data_fingerprint"] != data_fingerprint:
        raise PreferError(
            f"{data_name}: changed since this run started ({state['data_fingerprint']} -> "
            f"{data_fingerprint}); cannot resume exactly"
        )
    restore_optimizer(checkpoint, state, optimizer, scheduler, modules=modules)
    return BlockOrder(num_items, seed=seed, **state["order"]), state["step"]


def restore_optimizer(
    checkpoint: Path, state: dict[str, Any], optimizer, scheduler, *, modules: list[torch.nn.Module]
) -> None:
    """Optimizer (trainer_state.pt, or each rank's FSDP2 shard from `optimizer/`), schedule and this rank's RNG.
    `modules` are the ones the optimizer updates, in the order they were saved."""
    if (checkpoint / "optimizer").is_dir():
        if not any(is_sharded(module) for module in modules):
            raise PreferError(
                f"{checkpoint}: its optimizer state is sharded (written with parallel=fsdp); resume "
                "with parallel=fsdp under torchrun"
            )
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        container = torch.nn.ModuleList(unwrap(module) for module in modules)  # names params as at saving
        holder = {"optimizer": get_optimizer_state_dict(container, optimizer)}
        dcp.load(holder, checkpoint_id=checkpoint / "optimizer")
        set_optimizer_state_dict(container, optimizer, optim_state_dict=holder["optimizer"])
    elif any(is_sharded(module) for module in modules):
        raise PreferError(f"{checkpoint}: written without parallel=fsdp; resume it with parallel=ddp")
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ranks = state.get("rng_ranks")
    same_ranks = ranks is not None and torch_dist.is_initialized() and len(ranks) == torch_dist.get_world_size()
    # On another number of ranks the batches are still the same (the data order is global); dropout draws are not.
    restore_rng_state(ranks[torch_dist.get_rank()] if same_ranks else state["rng"])


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model,
    tokenizer,
    extra: dict[str, torch.nn.Module],
    info: dict,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """A resumable checkpoint: the model in HF format (a LoRA model: its adapters and trainable heads only, as a
    peft adapter directory) plus optimizer, scheduler, RNG and data position. The
    directory appears whole (atomic rename) and only then does `latest` point at it.

    Under torchrun a collective (call it on every rank): rank 0 writes the model, the schedule and every rank's
    RNG state. The optimizer state goes into trainer_state.pt (DDP: every rank holds the same), or with FSDP2 each
    rank writes its own shard with torch.distributed.checkpoint into `optimizer/` (a filesystem every rank sees)."""
    checkpoints = run_dir / "checkpoints"
    path = checkpoints / f"step_{step:08d}"
    modules = [model, *extra.values()]
    sharded = any(is_sharded(module) for module in modules)
    distributed = torch_dist.is_initialized() and torch_dist.get_world_size() > 1
    ranks_rng = None
    if distributed:
        ranks_rng = [None] * torch_dist.get_world_size()  # data-dependent shapes make dropout draws differ by rank
        torch_dist.all_gather_object(ranks_rng, rng_state())
    model_state, extra_states = gather_model(model, extra)
    staging = checkpoints / f".{path.name}.optimizer"
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if is_main_process():
            shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
        torch_dist.barrier()
        container = torch.nn.ModuleList(unwrap(module) for module in modules)
        dcp.save({"optimizer": get_optimizer_state_dict(container, optimizer)}, checkpoint_id=staging)
        torch_dist.barrier()
    if is_main_process():
        with atomic_path(path) as tmp:
            write_model(tmp / "model", model, tokenizer, model_state, extra_states, info, merge=False)
            if sharded:
                os.replace(staging, tmp / "optimizer")
            trainer_state = {
                "optimizer": None if sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                **state,
            }
            if ranks_rng is not None:
                trainer_state["rng_ranks"] = ranks_rng
            torch.save(trainer_state, tmp / TRAINER_STATE)
        write_text_atomic(checkpoints / "latest", path.name + "\n")
        for old in sorted(checkpoints.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if distributed:
        torch_dist.barrier()  # every rank returns once the checkpoint is complete
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (path / TRAINER_STATE).exists():
        raise PreferError(f"{pointer}: points at {path.name}, which is missing or incomplete")
    return path


def open_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Own the run directory (prefer.run_dir: create it, lock it, clean killed writes' staging) and refuse to mix
    two runs in it: without `resume` it must hold no run; with `resume` a checkpoint needs its saved config.
    Cheap: stages call it before building data or loading models. Returns the checkpoint to resume from."""
    from prefer.run_dir import claim_run_dir

    if is_main_process():  # under torchrun rank 0 holds the lock for the job
        claim_run_dir(run_dir)
    saved_path = run_dir / "config.yaml"
    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if not resume:
        if checkpoint is not None or (run_dir / "final").exists() or saved_path.exists():
            raise PreferError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another out_dir")
        return None
    if checkpoint is not None and not saved_path.exists():
        raise PreferError(
            f"{saved_path}: missing, so nothing says which run {checkpoint.name} belongs to; cannot resume"
        )
    return checkpoint


def check_run_dir(
    run_dir: Path, config_class: type, config, resume: bool, *, may_change: frozenset[str] = RESUME_MAY_CHANGE
) -> Path | None:
    """`open_run_dir`, and with `resume` the saved config must equal this one except for `may_change` keys.
    Returns the checkpoint to resume from (None: start from the beginning)."""
    checkpoint = open_run_dir(run_dir, resume)
    saved_path = run_dir / "config.yaml"
    if not resume or not saved_path.exists():
        return checkpoint  # None: nothing was started here yet, start from the beginning
    from prefer.config import load_config

    saved = asdict(load_config(config_class, yaml_path=saved_path))
    difference = config_difference(saved, asdict(config), may_change=may_change)
    if difference is not None:
        key, before, after = difference
        raise PreferError(
            f"{saved_path}: {key} is {before!r} in the run being resumed, {after!r} now; --resume "
            f"continues the same run (only {', '.join(sorted(may_change))} may change): "
            "drop the change or choose another out_dir"
        )
    return checkpoint


def check_checkpoint_vocabulary(checkpoint: Path, checkpoint_tokenizer, run_tokenizer) -> None:
    """A checkpoint resumes only into a run with its vocabulary: token ids of another tokenizer mean other text."""
    ours, theirs = run_tokenizer.get_vocab(), checkpoint_tokenizer.get_vocab()
    if ours != theirs:
        moved = sorted(t for t in set(ours) & set(theirs) if ours[t] != theirs[t])[:3]
        raise PreferError(
            f"{checkpoint / 'model'}: its tokenizer differs from this run's ({len(theirs)} vs "
            f"{len(ours)} tokens{f', e.g. different ids for {moved}' if moved else ''}); the "
            "checkpoint belongs to another run"
        )


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's trainer state; a corrupt or truncated file is a PreferError (resume cannot continue it)."""
    path = checkpoint / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError, ... on a damaged file
        cause = (str(error).splitlines() or ["truncated"])[0][:120]
        raise PreferError(
            f"{path}: unreadable ({type(error).__name__}: {cause}); the checkpoint is damaged, so "
            "this run cannot be resumed from it"
        ) from None
    if not isinstance(state, dict) or not {"step", "scheduler", "rng"} <= set(state):
        raise PreferError(f"{path}: not a prefer trainer state; this run cannot be resumed from it")
    return state
