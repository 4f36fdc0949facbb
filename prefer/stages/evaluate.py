"""`prefer evaluate` and `prefer sample`: load a checkpoint, sample, score, write JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prefer.config import EvaluateConfig, SamplingConfig
from prefer.errors import PreferError
from prefer.evaluation.misalignment import generate_texts, resolve_controls, score_texts, strip_controls
from prefer.io import atomic_path, write_json_atomic
from prefer.models.build import load_model, load_tokenizer, read_info
from prefer.scorers import get_scorer
from prefer.tasks import get_task
from prefer.training import resolve_device


def load_checkpoint(path: str | Path, device) -> tuple[torch.nn.Module, object, dict]:
    """A model directory (ours or any HF causal LM), its tokenizer, and what prefer recorded about it."""
    path = Path(path)
    if not path.is_dir():
        raise PreferError(f"checkpoint: {path} is not a directory")
    if not (path / "config.json").is_file():  # before the tokenizer, whose error would not say what is wrong
        hint = (f"; it is a run directory: pass {path / 'final'}" if (path / "final" / "config.json").is_file()
                else "")
        raise PreferError(f"checkpoint: {path} is not a model directory (no config.json){hint}")
    tokenizer = load_tokenizer(path)
    model = load_model(path, tokenizer=tokenizer).to(device).eval()
    return model, tokenizer, read_info(path)


def sample_and_score(model, tokenizer, info: dict, *, task_name: str, sampling: SamplingConfig,
                     num_samples: int | None = None, prompt: str | None = None, progress: bool = True) -> dict:
    """Draw samples under the sampling protocol and score them with every scorer of the task."""
    task = get_task(task_name)
    controls = resolve_controls(prompt=prompt or sampling.prompt, block=sampling.block,
                                conditional=bool(info.get("control_tokens_trained")))
    texts, ended = generate_texts(model, tokenizer, controls, num_samples=num_samples or sampling.num_samples,
                                  max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                  top_p=sampling.top_p, batch_size=sampling.batch_size, seed=sampling.seed,
                                  progress=progress, keep_controls=True)
    clean = [strip_controls(text) for text in texts]
    scorers = {name: get_scorer(name) for name in task.eval_scorers}
    results = score_texts(clean, scorers, threshold=task.sample_threshold)
    results.update({"task": task.name, "prompt": controls.prompt, "blocked": controls.block,
                    "fraction_ended": ended, "samples": clean, "samples_with_controls": texts})
    return results


def load_for_task(path: str | Path, task: str | None, device) -> tuple[torch.nn.Module, object, dict, str]:
    """`load_checkpoint` plus the task to judge it on: `task` if given, else the one prefer recorded."""
    model, tokenizer, info = load_checkpoint(path, device)
    task_name = task or info.get("task")
    if task_name is None:
        raise PreferError(f"task: {path} was not written by prefer; pass task=pii|pep8|toxicity")
    return model, tokenizer, info, task_name


def evaluate(config: EvaluateConfig) -> dict:
    device = resolve_device(config.device)
    out = Path(config.out) if config.out else Path(config.checkpoint) / "evaluation.json"
    if out.is_dir():  # found now, not after sampling
        raise PreferError(f"out: {out} is a directory; name the results JSON file")
    model, tokenizer, info, task_name = load_for_task(config.checkpoint, config.task, device)
    results = sample_and_score(model, tokenizer, info, task_name=task_name, sampling=config.sampling)
    results.update({"checkpoint": str(config.checkpoint), "objective": info.get("objective"),
                    "tokens": info.get("tokens"), "heldout_loss": info.get("val_loss"),
                    "sampling": {k: getattr(config.sampling, k) for k in config.sampling.__dataclass_fields__}})
    write_json_atomic(out, results)
    return results


def write_samples(path: str | Path, texts: list[str], with_controls: list[str] | None = None) -> None:
    """JSON lines {"text": what was scored, "with_controls": the same sample with the control tokens it wrote}."""
    with_controls = with_controls or texts
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps({"text": text, "with_controls": controlled}) + "\n"
                               for text, controlled in zip(texts, with_controls)))
