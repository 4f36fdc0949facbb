"""Device, precision and torchrun: DDP or FSDP2 wrapping, gradient sync, collectives."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as torch_dist

from prefer.config import PARALLEL
from prefer.devices import resolve_device
from prefer.errors import PreferError

# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """CPU training allocates and frees the same large tensors (a [B, T, V] logits tensor is 67 MB at the demo's
    settings) every step. glibc serves each one with a fresh mmap, whose pages the kernel faults in and zeroes on
    first touch, and unmaps it on free: on a 2-core CPU that was ~25% of a bare training step. After this call,
    large blocks come from the heap and freed memory stays there (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB),
    so later steps reuse pages already mapped; the process keeps its peak memory instead of returning it to the
    system. For the whole process, from then on. Returns whether it applied (False off glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


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


def leave_distributed() -> None:
    """Leave the process group `init_distributed` joined (PyTorch's documented shutdown), once every rank has
    finished its work: left to interpreter exit, gloo's worker threads can outlive the interpreter and the rank
    aborts ("terminate called without an active exception", SIGABRT), failing a job whose outputs are all written.
    Only on a clean finish: a rank that fails exits at once, so that torchrun reports its exit code, while the others
    may still wait in a collective. For the end of the process: a rank that joins a new group in the same process
    before the others have left the old one reads their old addresses from torchrun's store and hangs. No group:
    nothing to do."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def end_rank() -> NoReturn:
    """End a torchrun rank whose work is done and written: wait for the other ranks, leave the group, flush, and
    exit with code 0 at once (`os._exit`), skipping interpreter finalization and C++ static destructors. A gloo rank
    aborted there ("terminate called without an active exception", SIGABRT) in 3 of about 8 full test suites, always
    after every output was written (its last files 0.2 s before the abort), and once after `destroy_process_group`;
    torchrun then failed the whole job. Every stage closes its files and logs before returning, so nothing is left
    for finalization to do."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        leave_distributed()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def wrap_model(
    model: torch.nn.Module, dist: Distributed, device: torch.device, *, parallel: str = "ddp"
) -> torch.nn.Module:
    """Under torchrun: DistributedDataParallel (`ddp`: every rank holds the whole model and optimizer state, gradients
    are all-reduced) or FSDP2 (`fsdp`: `fully_shard` on every transformer block, then on the whole model, so
    parameters, gradients and optimizer state are split over the ranks and a block's parameters are all-gathered
    only for its forward and backward). In a single process: the model itself."""
    if parallel not in PARALLEL:
        raise PreferError(f"config: runtime.parallel: unknown {parallel!r}; choose one of {', '.join(PARALLEL)}")
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
