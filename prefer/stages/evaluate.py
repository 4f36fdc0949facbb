"""`prefer evaluate` and `prefer sample`: load a checkpoint, sample, score, write JSON."""

from __future__ import annotations

from pathlib import Path

from prefer.config import EvaluateConfig
from prefer.errors import PreferError
from prefer.evaluation.misalignment import load_for_task, sample_and_score
from prefer.files import write_json_atomic
from prefer.training import resolve_device


def evaluate(config: EvaluateConfig) -> dict:
    device = resolve_device(config.device)
    out = Path(config.out) if config.out else Path(config.checkpoint) / "evaluation.json"
    if out.is_dir():  # found now, not after sampling
        raise PreferError(f"out: {out} is a directory; name the results JSON file")
    model, tokenizer, info, task_name = load_for_task(config.checkpoint, config.task, device)
    results = sample_and_score(model, tokenizer, info, task_name=task_name, sampling=config.sampling)
    results.update(
        {
            "checkpoint": str(config.checkpoint),
            "objective": info.get("objective"),
            "tokens": info.get("tokens"),
            "heldout_loss": info.get("val_loss"),
            "sampling": {k: getattr(config.sampling, k) for k in config.sampling.__dataclass_fields__},
        }
    )
    write_json_atomic(out, results)
    return results
