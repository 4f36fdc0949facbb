"""Training utilities shared by every stage: device and precision, torchrun/DDP, optimizer and schedule, data order,
atomic checkpoints with exact resume, metric logging. Loss math lives in `prefer.objectives`, never here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from prefer.errors import PreferError
from prefer.io import atomic_path, write_text_atomic

# ---------------------------------------------------------------- device, precision, distributed

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PreferError(f"device: {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked (auto = on GPU only); fp32 otherwise. Master weights stay fp32."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs); a plain process is rank 0 of 1."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Distributed(), resolve_device(device_name)
    dist = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist, device


def wrap_ddp(model: torch.nn.Module, dist: Distributed, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun; the model itself in a single process."""
    if dist.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------- optimizer and schedule

def make_optimizer(modules: list[torch.nn.Module], *, lr: float, weight_decay: float, betas: tuple[float, float]):
    """AdamW; matrices decay, biases and norms do not (nanoGPT's rule)."""
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def make_scheduler(optimizer, *, total_steps: int, warmup_steps: int, min_lr_fraction: float):
    """Linear warmup to the peak, then linear decay to `min_lr_fraction` of it (the paper's schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 1.0 - (1.0 - min_lr_fraction) * min(1.0, progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------- data order

class BlockOrder:
    """Shuffled order over N blocks, one fresh permutation per epoch, seeded by (seed, epoch). Its whole state is
    (epoch, cursor), so a resumed run draws exactly the batches the killed run would have drawn."""

    def __init__(self, num_blocks: int, *, seed: int, epoch: int = 0, cursor: int = 0):
        if num_blocks == 0:
            raise PreferError("data: the corpus is too small to fill a single training block")
        self.num_blocks, self.seed, self.epoch, self.cursor = num_blocks, seed, epoch, cursor

    def _permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_blocks, generator=generator)

    def next(self, count: int) -> torch.Tensor:
        taken = []
        while count > 0:
            permutation = self._permutation()
            chunk = permutation[self.cursor : self.cursor + count]
            taken.append(chunk)
            count -= len(chunk)
            self.cursor += len(chunk)
            if self.cursor == self.num_blocks:
                self.epoch, self.cursor = self.epoch + 1, 0
        return torch.cat(taken)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}


def micro_batch_size(batch_size: int, micro_batch_size: int | None, world_size: int) -> int:
    """Sequences (or prompts) per forward pass; the global batch must split evenly over passes and ranks."""
    micro = micro_batch_size or batch_size // world_size
    if micro == 0 or batch_size % (micro * world_size):
        raise PreferError(f"config: train.batch_size {batch_size} must be a multiple of micro_batch_size x ranks "
                          f"({micro} x {world_size})")
    return micro


def restore_training(checkpoint: Path, optimizer, scheduler, *, num_items: int, seed: int, data_fingerprint: str,
                     data_name: str) -> tuple["BlockOrder", int]:
    """Load optimizer, schedule, RNG and data position from a checkpoint; returns (data order, step). Refuses to
    resume when the data changed (the same position would then mean other examples)."""
    state = load_trainer_state(checkpoint)
    if state["data_fingerprint"] != data_fingerprint:
        raise PreferError(f"{data_name}: changed since this run started ({state['data_fingerprint']} -> "
                          f"{data_fingerprint}); cannot resume exactly")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    return BlockOrder(num_items, seed=seed, **state["order"]), state["step"]


# ---------------------------------------------------------------- RNG

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


# ---------------------------------------------------------------- checkpoints

TRAINER_STATE = "trainer_state.pt"


def save_model(path: Path, model: torch.nn.Module, tokenizer, extra: dict[str, torch.nn.Module] | None = None,
               info: dict | None = None) -> None:
    """A Hugging Face model directory (safetensors + tokenizer), written atomically. `extra` modules (e.g. a value
    head) go beside it as `<name>.safetensors`; `info` as prefer.json (task, objective, control-token usage)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        unwrap(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, module in (extra or {}).items():
            save_file({k: v.contiguous() for k, v in unwrap(module).state_dict().items()}, tmp / f"{name}.safetensors")
        if info is not None:
            (tmp / "prefer.json").write_text(json.dumps(info, indent=2) + "\n")


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, extra: dict[str, torch.nn.Module], info: dict,
                    optimizer, scheduler, state: dict[str, Any], keep: int = 2) -> Path:
    """A resumable checkpoint: the model in HF format plus optimizer, scheduler, RNG and data position. The
    directory appears whole (atomic rename) and only then does `latest` point at it."""
    checkpoints = run_dir / "checkpoints"
    path = checkpoints / f"step_{step:08d}"
    with atomic_path(path) as tmp:
        save_model(tmp / "model", model, tokenizer, extra, info)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(), **state},
            tmp / TRAINER_STATE,
        )
    write_text_atomic(checkpoints / "latest", path.name + "\n")
    for old in sorted(checkpoints.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (path / TRAINER_STATE).exists():
        raise PreferError(f"{pointer}: points at {path.name}, which is missing or incomplete")
    return path


def check_run_dir(run_dir: Path, config_class: type, config, resume: bool, *, sections: tuple[str, ...]) -> Path | None:
    """Never overwrite a run by accident; resume only a run whose `sections` of the config are the same."""
    checkpoint = latest_checkpoint(run_dir) if run_dir.exists() else None
    if not resume:
        if checkpoint is not None or (run_dir / "final").exists():
            raise PreferError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another out_dir")
        return None
    if checkpoint is None:
        return None  # nothing to resume yet (killed before its first checkpoint): start from the beginning
    from prefer.config import load_config

    saved = asdict(load_config(config_class, yaml_path=run_dir / "config.yaml"))
    for section in sections:
        if saved[section] != asdict(config)[section]:
            raise PreferError(f"{run_dir / 'config.yaml'}: section '{section}' differs from this run's config; "
                              "a checkpoint can only resume the run that wrote it")
    return checkpoint


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------- logging

def accumulate_stats(totals: dict[str, float], stats: dict[str, torch.Tensor], *, fraction: float) -> None:
    """Fold one micro-batch's stats into the optimizer step's. Loss terms (keys ending in `loss`) were normalised
    by the whole step's token count, so they are shares that add up; every other stat is a mean over its own
    micro-batch, weighted by that micro-batch's `fraction` of the step."""
    for key, value in stats.items():
        share = value.item() if key.endswith("loss") else value.item() * fraction
        totals[key] = totals.get(key, 0.0) + share


def average_across_ranks(totals: dict[str, float], dist: Distributed) -> dict[str, float]:
    """Each rank saw its share of the global batch; the logged step stats are the mean over ranks."""
    if dist.world_size == 1:
        return totals
    keys = sorted(totals)
    values = torch.tensor([totals[k] for k in keys], dtype=torch.float64)
    torch_dist.all_reduce(values)
    return {k: v / dist.world_size for k, v in zip(keys, values.tolist())}


class MetricsLog:
    """Every logged scalar goes to `metrics.jsonl` (one JSON object per step) and to TensorBoard."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # Drop what the killed run logged after its last checkpoint: those steps are about to run again.
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: (float(v) if not isinstance(v, (int, str)) else v) for k, v in values.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
