"""Training utilities shared by every stage; loss math lives in `prefer.objectives`, never here.

- `distributed`: device and precision, torchrun (DDP or FSDP2) wrapping, gradient sync, collectives
  (how a torchrun job splits the work: docs/distributed.md);
- `optimization`: AdamW, the warmup + linear-decay schedule, the optimizer step, loss denominators, data order;
- `checkpoints`: atomic Hugging Face checkpoints with exact resume (model, optimizer, schedule, RNG, data position),
  run directories;
- `metrics`: step statistics and the metrics log;
- `trackers`: the experiment trackers the metrics log feeds (TensorBoard, trackio, MLflow, W&B: docs/trackers.md).
Every name is importable from `prefer.training` itself, also those that live in the leaves below it so that models,
scorers and the report can use them: `prefer.devices` (device, rank 0, DDP/FSDP2 unwrapping), `prefer.models.saving`
(`save_model`, `full_state_dict`) and `prefer.run_dir` (`read_metrics`)."""

from __future__ import annotations

from prefer.devices import is_main_process, is_sharded, resolve_device, unwrap
from prefer.models.saving import full_state_dict, save_model
from prefer.run_dir import read_metrics
from prefer.training.checkpoints import (
    TRAINER_STATE,
    check_checkpoint_vocabulary,
    check_run_dir,
    latest_checkpoint,
    load_trainer_state,
    open_run_dir,
    restore_optimizer,
    restore_rng_state,
    restore_training,
    rng_state,
    save_checkpoint,
    set_seed,
)
from prefer.training.distributed import (
    Distributed,
    all_gather_objects,
    all_gather_rows,
    autocast,
    end_rank,
    gradient_sync,
    init_distributed,
    keep_freed_memory,
    leave_distributed,
    main_process_first,
    unsharded,
    wrap_model,
)
from prefer.training.metrics import (
    MetricsLog,
    accumulate_stats,
    average_across_ranks,
)
from prefer.training.optimization import (
    BlockOrder,
    make_optimizer,
    make_optimizer_and_schedule,
    make_scheduler,
    micro_batch_size,
    optimizer_step,
    per_rank_denominator,
)
from prefer.training.trackers import check_trackers

__all__ = [
    "BlockOrder",
    "Distributed",
    "MetricsLog",
    "TRAINER_STATE",
    "accumulate_stats",
    "all_gather_objects",
    "all_gather_rows",
    "autocast",
    "average_across_ranks",
    "check_checkpoint_vocabulary",
    "check_run_dir",
    "check_trackers",
    "end_rank",
    "full_state_dict",
    "gradient_sync",
    "init_distributed",
    "is_main_process",
    "is_sharded",
    "keep_freed_memory",
    "latest_checkpoint",
    "leave_distributed",
    "load_trainer_state",
    "main_process_first",
    "make_optimizer",
    "make_optimizer_and_schedule",
    "make_scheduler",
    "micro_batch_size",
    "open_run_dir",
    "optimizer_step",
    "per_rank_denominator",
    "read_metrics",
    "resolve_device",
    "restore_optimizer",
    "restore_rng_state",
    "restore_training",
    "rng_state",
    "save_checkpoint",
    "save_model",
    "set_seed",
    "unsharded",
    "unwrap",
    "wrap_model",
]
