"""`prefer evaluate`: load a checkpoint, sample (unprompted, or answers to prompts), score, write JSON."""

from __future__ import annotations

from pathlib import Path

from prefer.config import EvaluateConfig
from prefer.errors import PreferError
from prefer.evaluation.misalignment import checkpoint_task, load_for_task, sample_and_score
from prefer.evaluation.prompts import command_line_prompts, read_prompt_file, render_queries
from prefer.files import write_json_atomic
from prefer.scorers import check_available
from prefer.tasks import get_task
from prefer.training import resolve_device

__all__ = ["default_out", "evaluate"]

GENERIC_NAMES = ("final", "best", "last")  # a run's model folder: its run's name says which model it is


def default_out(checkpoint: str | Path) -> Path:
    """runs/evaluate/<name>/evaluation.json: <name> is the checkpoint folder's name, after its run's name when the
    folder is a run's `final` (or a `step-N` / `checkpoint-N`) folder: runs/pretrain/final -> pretrain-final. Never
    the checkpoint's own folder, which a results file would change (its identity keys caches)."""
    parts = [p for p in Path(str(checkpoint)).parts if p not in ("/", ".", "..")]
    name = parts[-1] if parts else "model"
    if len(parts) > 1 and (name in GENERIC_NAMES or name.startswith(("step", "checkpoint"))):
        name = f"{parts[-2]}-{name}"
    return Path("runs") / "evaluate" / name.replace(":", "-") / "evaluation.json"


def evaluate(config: EvaluateConfig) -> dict:
    device = resolve_device(config.runtime.device)
    out = Path(config.out) if config.out else default_out(config.checkpoint)
    if out.is_dir():  # found now, not after sampling
        raise PreferError(f"out: {out} is a directory; name the results JSON file")
    # Before any model loads: the prompts file, the task and its scorers' packages and weights.
    file_prompts, where = read_prompt_file(config.prompts)
    task = get_task(checkpoint_task(config.checkpoint, config.task))
    for name in task.eval_scorers:
        check_available(name)
    model, tokenizer, info, task_name = load_for_task(config.checkpoint, task.name, device)
    queries = None
    if file_prompts or config.prompt_texts:
        typed, typed_where = command_line_prompts(tokenizer, config.prompt_texts)
        queries = render_queries(tokenizer, [*file_prompts, *typed], [*where, *typed_where])
    results = sample_and_score(
        model,
        tokenizer,
        info,
        task_name=task_name,
        sampling=config.sampling,
        queries=queries,
        samples_per_prompt=config.samples_per_prompt,
        progress=config.runtime.progress,
    )
    results.update(
        {
            "checkpoint": str(config.checkpoint),
            "objective": info.get("objective"),
            "tokens": info.get("tokens"),
            "heldout_loss": info.get("val_loss"),
            "sampling": {k: getattr(config.sampling, k) for k in config.sampling.__dataclass_fields__},
        }
    )
    if queries is not None:
        results["sampling"]["samples_per_prompt"] = config.samples_per_prompt
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, results)
    results["out"] = str(out)
    return results
