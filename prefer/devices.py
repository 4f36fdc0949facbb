"""Which device, which process writes, and the module inside a data-parallel wrapper: the few torch helpers that
models, scorers and model files need, in a leaf below them (the rest of torchrun is `prefer.training.distributed`).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from prefer.errors import PreferError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PreferError(f"device: {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that writes files and logs."""
    return not torch_dist.is_initialized() or torch_dist.get_rank() == 0


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the module is, or holds, an FSDP2-sharded module."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP wrapper (FSDP2 shards in place: the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
