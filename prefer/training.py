"""Training utilities shared by every stage: device and precision, torchrun (DDP or FSDP2), optimizer and schedule,
data order, atomic checkpoints with exact resume, metric logging. Loss math lives in `prefer.objectives`, never here.
How a torchrun job splits the work: docs/distributed.md."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from prefer.config import PARALLEL, OptimizerConfig, ScheduleConfig
from prefer.errors import PreferError
from prefer.files import atomic_path, write_text_atomic

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


@contextlib.contextmanager
def main_process_first(dist: Distributed):
    """Rank 0 runs the block before the other ranks do (work that writes a shared cache: corpus scoring, tokenizer
    training); they start it once rank 0 has finished, and find the cache filled."""
    if dist.world_size > 1 and not dist.is_main:
        torch_dist.barrier()
    yield
    if dist.world_size > 1 and dist.is_main:
        torch_dist.barrier()


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up (NCCL for GPU tensors, gloo for CPU ones); a plain process is rank 0
    of 1."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Distributed(), resolve_device(device_name)
    dist = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        # On GPUs NCCL carries CUDA tensors and gloo CPU ones (logged stats, RNG states, sampled ids)
        torch_dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return dist, device


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that writes files and logs."""
    return not torch_dist.is_initialized() or torch_dist.get_rank() == 0


def wrap_model(model: torch.nn.Module, dist: Distributed, device: torch.device, *, parallel: str = "ddp"
               ) -> torch.nn.Module:
    """Under torchrun: DistributedDataParallel (`ddp`: every rank holds the whole model and optimizer state, gradients
    are all-reduced) or FSDP2 (`fsdp`: `fully_shard` on every transformer block, then on the whole model, so
    parameters, gradients and optimizer state are split over the ranks and a block's parameters are all-gathered
    only for its forward and backward). In a single process: the model itself."""
    if parallel not in PARALLEL:
        raise PreferError(f"config: parallel: unknown {parallel!r}; choose one of {', '.join(PARALLEL)}")
    if dist.world_size == 1:
        return model
    if parallel == "fsdp":
        return _fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _fully_shard(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    # fully_shard keeps each rank's slice of its OWN copy (DDP broadcasts rank 0's): start every rank from rank 0's.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch_dist.broadcast(tensor, src=0)
    # Hugging Face models name their blocks in `_no_split_modules` (GPT2Block, LlamaDecoderLayer, ...): one shard
    # group each, so that only one block is whole at a time; the rest (embeddings, final norm, heads) is the root's.
    blocks = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or ())}
    for module in model.modules():
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    # Value heads return slices (views); FSDP2 warns that an in-place op on them would skip its hook. Ours never do.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the module is, or holds, an FSDP2-sharded module."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP wrapper (FSDP2 shards in place: the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(modules: list[torch.nn.Module], *, sync: bool):
    """Forward and backward passes inside reduce gradients over the ranks only when `sync`: False for every
    micro-batch of an optimizer step but the last, whose backward then reduces the accumulated sum once (DDP's
    `no_sync`, FSDP2's `set_requires_gradient_sync`). Plain modules: nothing to do."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    with contextlib.ExitStack() as stack:
        for module in modules:
            if isinstance(module, DistributedDataParallel) and not sync:
                stack.enter_context(module.no_sync())
            elif isinstance(module, FSDPModule):
                module.set_requires_gradient_sync(sync)
                stack.callback(module.set_requires_gradient_sync, True)
        yield


@contextlib.contextmanager
def unsharded(model: torch.nn.Module):
    """Inside, an FSDP2 model holds all its parameters and its forward passes run no collective, so ranks may run
    different numbers of them (sampling: each rank stops when its own rows have ended). Costs the memory of the
    whole model while inside. Other models: nothing to do."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield model
        return

    groups = [module for module in model.modules() if isinstance(module, FSDPModule)]
    model.set_reshard_after_forward(False)
    for module in groups:
        module.unshard()
    try:
        yield model
    finally:
        for module in groups:
            module.reshard()
        model.set_reshard_after_forward(True)  # fully_shard's default: blocks reshard after forward, the root not
        model.set_reshard_after_forward(False, recurse=False)


def all_gather_objects(value: Any, dist: Distributed) -> list[Any]:
    """[rank 0's value, rank 1's, ...] on every rank (pickled: for small things such as RNG states)."""
    if dist.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered


def all_gather_rows(tensor: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """Every rank's [N, ...] tensor (same shape on every rank) concatenated in rank order: [world_size * N, ...]."""
    if dist.world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, tensor)
    return torch.cat(parts)


# ---------------------------------------------------------------- optimizer and schedule

def make_optimizer(modules: list[torch.nn.Module], *, lr: float, weight_decay: float, betas: tuple[float, float]):
    """AdamW; matrices decay, biases and norms do not (nanoGPT's rule)."""
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def make_scheduler(optimizer, *, total_steps: int, warmup_steps: int, min_lr_fraction: float, start_step: int = 0):
    """Linear warmup to the peak, then linear decay to `min_lr_fraction` of it (the paper's schedule). start_step:
    the schedule starts there (a run that continues another one's budget)."""

    def factor(step: int) -> float:
        step += start_step
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 1.0 - (1.0 - min_lr_fraction) * min(1.0, progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer_and_schedule(modules: list[torch.nn.Module], optimizer: OptimizerConfig, schedule: ScheduleConfig,
                                *, total_steps: int, start_step: int = 0):
    """AdamW of a stage's `optimizer` section (its lr resolved) and the warmup + linear-decay schedule of its
    `schedule` section, warmup rounded to whole steps (at least one)."""
    adamw = make_optimizer(modules, lr=optimizer.lr, weight_decay=optimizer.weight_decay,
                           betas=(optimizer.beta1, optimizer.beta2))
    scheduler = make_scheduler(adamw, total_steps=total_steps, min_lr_fraction=schedule.min_lr_fraction,
                               warmup_steps=max(1, round(schedule.warmup_fraction * total_steps)), start_step=start_step)
    return adamw, scheduler


def optimizer_step(modules: list[torch.nn.Module], optimizer, scheduler, *, grad_clip: float) -> float:
    """The end of every optimizer step of every stage: clip the global gradient norm of the modules' parameters,
    step, advance the schedule, drop the gradients. Returns the norm before clipping."""
    parameters = [p for module in modules for p in module.parameters()]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.item()


def per_rank_denominator(global_count: float, world_size: int) -> float:
    """What a rank normalises its loss by: the count (tokens, prompts) of the whole optimizer step over all ranks,
    divided by the number of ranks, because DDP and FSDP2 average the ranks' gradients. Then 1 process x N
    micro-batches and N ranks x 1 give the same gradient (see prefer.objectives.common)."""
    return global_count / world_size


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


def micro_batch_size(batch_size: int, micro_batch_size: int | None, world_size: int, *,
                     field: str = "train.batch_size") -> int:
    """Sequences (or prompts) per forward pass on one rank; the global batch (`field`, all ranks together) must split
    evenly over passes and ranks. None = the rank's whole share in one pass."""
    micro = micro_batch_size or batch_size // world_size
    if micro == 0 or batch_size % (micro * world_size):
        raise PreferError(f"config: {field} {batch_size} must be a multiple of micro_batch_size x ranks "
                          f"({micro} x {world_size})")
    return micro


def restore_training(checkpoint: Path, optimizer, scheduler, *, num_items: int, seed: int, data_fingerprint: str,
                     data_name: str, modules: list[torch.nn.Module] = ()) -> tuple["BlockOrder", int]:
    """Load optimizer, schedule, RNG and data position from a checkpoint; returns (data order, step). Refuses to
    resume when the data changed (the same position would then mean other examples). `modules`: those the
    optimizer updates (needed to load FSDP2 shards)."""
    state = load_trainer_state(checkpoint)
    if state["data_fingerprint"] != data_fingerprint:
        raise PreferError(f"{data_name}: changed since this run started ({state['data_fingerprint']} -> "
                          f"{data_fingerprint}); cannot resume exactly")
    restore_optimizer(checkpoint, state, optimizer, scheduler, modules=modules)
    return BlockOrder(num_items, seed=seed, **state["order"]), state["step"]


def restore_optimizer(checkpoint: Path, state: dict[str, Any], optimizer, scheduler, *,
                      modules: list[torch.nn.Module]) -> None:
    """Optimizer (trainer_state.pt, or each rank's FSDP2 shard from `optimizer/`), schedule and this rank's RNG.
    `modules` are the ones the optimizer updates, in the order they were saved."""
    if (checkpoint / "optimizer").is_dir():
        if not any(is_sharded(module) for module in modules):
            raise PreferError(f"{checkpoint}: its optimizer state is sharded (written with parallel=fsdp); resume "
                              "with parallel=fsdp under torchrun")
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


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole state dict. FSDP2: a collective (call it on every rank) that gathers the shards onto
    rank 0's CPU; the other ranks get {}. Otherwise: its state dict as it is."""
    module = unwrap(module)
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Gathered copies no longer share storage, so tied weights (GPT-2's lm_head = wte) would be written twice:
    # keep each parameter under its first name only, as a single-process save_pretrained does.
    names: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    tied = {name for group in names.values() for name in group[1:]}
    return {key: value for key, value in state.items() if key not in tied}


def _write_model(path: Path, model: torch.nn.Module, tokenizer, state: dict[str, torch.Tensor] | None,
                 extra: dict[str, dict[str, torch.Tensor]], info: dict | None) -> None:
    from safetensors.torch import save_file

    # a gathered state dict (FSDP2) replaces the model's own shards; save_pretrained edits the dict it is given
    unwrap(model).save_pretrained(path, **({"state_dict": dict(state)} if state is not None else {}))
    tokenizer.save_pretrained(path)
    for name, tensors in extra.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, path / f"{name}.safetensors")
    if info is not None:
        (path / "prefer.json").write_text(json.dumps(info, indent=2) + "\n")


def _gather_model(model: torch.nn.Module, extra: dict[str, torch.nn.Module] | None
                  ) -> tuple[dict[str, torch.Tensor] | None, dict[str, dict[str, torch.Tensor]]]:
    state = full_state_dict(model) if is_sharded(model) else None
    return state, {name: full_state_dict(module) for name, module in (extra or {}).items()}


def save_model(path: Path, model: torch.nn.Module, tokenizer, extra: dict[str, torch.nn.Module] | None = None,
               info: dict | None = None) -> None:
    """A Hugging Face model directory (safetensors + tokenizer), written atomically. `extra` modules (e.g. a value
    head) go beside it as `<name>.safetensors`; `info` as prefer.json (task, objective, control-token usage).
    Under torchrun only rank 0 writes; with FSDP2 it is a collective (shards are gathered): call it on every rank."""
    state, extra_states = _gather_model(model, extra)
    if not is_main_process():
        return
    with atomic_path(path) as tmp:
        _write_model(tmp, model, tokenizer, state, extra_states, info)


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, extra: dict[str, torch.nn.Module], info: dict,
                    optimizer, scheduler, state: dict[str, Any], keep: int = 2) -> Path:
    """A resumable checkpoint: the model in HF format plus optimizer, scheduler, RNG and data position. The
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
    model_state, extra_states = _gather_model(model, extra)
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
            _write_model(tmp / "model", model, tokenizer, model_state, extra_states, info)
            if sharded:
                os.replace(staging, tmp / "optimizer")
            trainer_state = {"optimizer": None if sharded else optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_state(), **state}
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

    saved, requested = asdict(load_config(config_class, yaml_path=run_dir / "config.yaml")), asdict(config)
    for section in sections:  # top-level names or dotted ones (train.batch_size)
        if _dotted(saved, section) != _dotted(requested, section):
            raise PreferError(f"{run_dir / 'config.yaml'}: section '{section}' differs from this run's config; "
                              "a checkpoint can only resume the run that wrote it")
    return checkpoint


def _dotted(values: dict, key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


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
