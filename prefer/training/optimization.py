"""AdamW, the warmup + linear-decay schedule, the optimizer step, loss denominators, data order."""

from __future__ import annotations

import math

import torch

from prefer.config import OptimizerConfig, ScheduleConfig
from prefer.errors import PreferError


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


def make_optimizer_and_schedule(
    modules: list[torch.nn.Module],
    optimizer: OptimizerConfig,
    schedule: ScheduleConfig,
    *,
    total_steps: int,
    start_step: int = 0,
):
    """AdamW of a stage's `optimizer` section (its lr resolved) and the warmup + linear-decay schedule of its
    `schedule` section, warmup rounded to whole steps (at least one)."""
    adamw = make_optimizer(
        modules, lr=optimizer.lr, weight_decay=optimizer.weight_decay, betas=(optimizer.beta1, optimizer.beta2)
    )
    scheduler = make_scheduler(
        adamw,
        total_steps=total_steps,
        min_lr_fraction=schedule.min_lr_fraction,
        warmup_steps=max(1, round(schedule.warmup_fraction * total_steps)),
        start_step=start_step,
    )
    return adamw, scheduler


def optimizer_step(modules: list[torch.nn.Module], optimizer, scheduler, *, grad_clip: float) -> float:
    """The end of every optimizer step of every stage: clip the global gradient norm of the modules' parameters,
    step, advance the schedule, drop the gradients. Returns the norm before clipping.

    A gradient norm that is not finite (a loss that overflowed or became NaN: the learning rate is the usual cause)
    stops the run with a PreferError naming the step, before the weights are touched: the run's last checkpoint
    stays the last good one (each rank holds the same norm, so every rank stops)."""
    parameters = [p for module in modules for p in module.parameters()]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    norm = grad_norm.item()
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        step = scheduler.last_epoch + 1  # optimizer steps taken by this run (its schedule's count), this one included
        lr = optimizer.param_groups[0]["lr"]
        raise PreferError(
            f"training diverged at optimizer step {step}: the gradient norm is {norm} (a non-finite loss); "
            f"lower optimizer.lr (now {lr:.3g} at this step) and start again or --resume from the last "
            "checkpoint, which is left as it was"
        )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def per_rank_denominator(global_count: float, world_size: int) -> float:
    """What a rank normalises its loss by: the count (tokens, prompts) of the whole optimizer step over all ranks,
    divided by the number of ranks, because DDP and FSDP2 average the ranks' gradients. Then 1 process x N
    micro-batches and N ranks x 1 give the same gradient (see prefer.objectives.common)."""
    return global_count / world_size


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


def micro_batch_size(
    batch_size: int, micro_batch_size: int | None, world_size: int, *, field: str = "train.batch_size"
) -> int:
    """Sequences (or prompts) per forward pass on one rank; the global batch (`field`, all ranks together) must split
    evenly over passes and ranks. None = the rank's whole share in one pass."""
    micro = micro_batch_size or batch_size // world_size
    if micro == 0 or batch_size % (micro * world_size):
        raise PreferError(
            f"config: {field} {batch_size} must be a multiple of micro_batch_size x ranks ({micro} x {world_size})"
        )
    return micro
