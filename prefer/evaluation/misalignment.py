"""Misalignment of a model's samples (Korbak et al. 2023, Sec. 3): sample N unconditional continuations of the
document-start token, score each with the task's scorers, aggregate. Given prompts (prefer.evaluation.prompts:
a file of {"prompt"} / {"messages"} lines, `--prompt TEXT`), S samples answer each prompt instead, each scored as
the RLHF protocol scores a response (prompt + response, or the pair for a reward model), with intervals by
bootstrap over prompts (a prompt's samples are not independent).

Reported per scorer: the mean over samples (with a bootstrap interval), the pooled per-character score (total
matches / total characters; robust to samples of different lengths), the fraction of samples above the
threshold, the expected maximum over 25 samples, and the diversity of the samples (distinct-n).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from prefer import checkpoint_record
from prefer.config import SamplingConfig
from prefer.controls import BAD, GOOD, SamplingControls, control_token_ids, resolve_controls
from prefer.errors import PreferError
from prefer.evaluation.metrics import (
    bootstrap_ci,
    distinct_n,
    expected_max,
    fraction_above,
    pooled_score,
)
from prefer.evaluation.prompts import Queries
from prefer.files import atomic_path
from prefer.models.build import load_checkpoint
from prefer.models.sources import is_model_source
from prefer.sampling import Decoding, sample_per_prompt
from prefer.scorers import Scorer, get_scorer, score_responses
from prefer.tasks import get_task


def generate_texts(
    model,
    tokenizer,
    controls: SamplingControls,
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
    keep_controls: bool = False,
    queries: Queries | None = None,
) -> tuple[list[str], float]:
    """N samples decoded without special tokens (keep_controls: with the `<|good|>`/`<|bad|>` the model wrote, which
    `strip_controls` removes), and the fraction of them that ended on `<|endoftext|>`. Without `queries`, N
    continuations of the document start (and the control tag `controls.prompt`); with them, N samples of each
    query, prompt-major (sample i answers queries[i // N])."""
    blocked, control = controls.blocked_ids(tokenizer), control_token_ids(tokenizer)
    decoding = Decoding(max_new_tokens, tokenizer.eos_token_id, temperature, top_p, blocked, control, batch_size)
    prompts, where = ([controls.prompt_ids(tokenizer)], None) if queries is None else (queries.ids, queries.where)
    outputs = sample_per_prompt(model, prompts, decoding, k=num_samples, seed=seed, where=where, progress=progress)
    if keep_controls:
        eos = tokenizer.eos_token_id
        texts = [tokenizer.decode([i for i in ids if i != eos], skip_special_tokens=False) for ids in outputs]
    else:
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
    ended = float(np.mean([len(ids) < max_new_tokens for ids in outputs]))
    return texts, ended


def strip_controls(text: str) -> str:
    """The text without control tokens: what the scorers see."""
    return text.replace(GOOD, "").replace(BAD, "")


def score_texts(
    texts: Sequence[str],
    scorers: Mapping[str, Scorer],
    *,
    threshold: float,
    prompts: Sequence[str] | None = None,
    num_prompts: int | None = None,
) -> dict:
    """Aggregate misalignment of texts under each scorer, plus diversity; per-sample scores included. With
    `prompts` (one per text, prompt-major, `num_prompts` distinct ones), each text is a response scored with its
    prompt (`prefer.scorers.score_responses`), and the intervals resample prompts, not samples."""
    lengths = np.array([len(t) for t in texts], dtype=float)
    results: dict = {
        "num_samples": len(texts),
        "mean_chars": float(lengths.mean()) if len(texts) else 0.0,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "scores": {},
    }
    for name, scorer in scorers.items():
        if prompts is None:
            scores = np.asarray(scorer(list(texts)), dtype=float)
            low, high = bootstrap_ci(scores)
            pooled_low, pooled_high = _pooled_ci(scores, lengths)
        else:
            scores = np.asarray(score_responses(scorer, list(prompts), list(texts)), dtype=float)
            low, high = bootstrap_ci(scores.reshape(num_prompts, -1).mean(axis=1))
            pooled_low, pooled_high = _pooled_ci_by_prompt(scores, lengths, num_prompts)
        results["scores"][name] = {
            "mean": float(scores.mean()),
            "mean_ci": [low, high],
            "pooled": pooled_score(scores, lengths),
            "pooled_ci": [pooled_low, pooled_high],
            "fraction_above_threshold": fraction_above(scores, threshold),
            "threshold": threshold,
            "expected_max_25": expected_max(scores, k=25) if len(scores) >= 25 else None,
            "per_sample": scores.tolist(),
        }
    return results


def _pooled_ci(scores: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """Bootstrap interval of the pooled per-character score: `bootstrap_ci` over sample indices, so that each
    resample keeps every sample's score with its length."""

    def pooled(index: np.ndarray, axis: int = 1) -> np.ndarray:  # index: [resamples, samples]
        index = index.astype(np.int64)
        return (scores[index] * lengths[index]).sum(axis) / np.maximum(lengths[index].sum(axis), 1)

    return bootstrap_ci(np.arange(len(scores)), pooled)


def _pooled_ci_by_prompt(scores: np.ndarray, lengths: np.ndarray, num_prompts: int) -> tuple[float, float]:
    """Bootstrap interval of the pooled per-character score, resampling prompts with all their samples."""
    matches = (scores * lengths).reshape(num_prompts, -1).sum(axis=1)  # per prompt: score x chars, summed
    chars = lengths.reshape(num_prompts, -1).sum(axis=1)

    def pooled(index: np.ndarray, axis: int = 1) -> np.ndarray:  # index: [resamples, prompts]
        index = index.astype(np.int64)
        return matches[index].sum(axis) / np.maximum(chars[index].sum(axis), 1)

    return bootstrap_ci(np.arange(num_prompts), pooled)


def sample_and_score(
    model,
    tokenizer,
    info: dict,
    *,
    task_name: str,
    sampling: SamplingConfig,
    num_samples: int | None = None,
    prompt: str | None = None,
    progress: bool = True,
    queries: Queries | None = None,
    samples_per_prompt: int = 1,
) -> dict:
    """Draw samples under the sampling protocol and score them with every scorer of the task; with `queries`,
    `samples_per_prompt` samples answer each of them (no control tag is put before a prompt; `sampling.block`
    still applies)."""
    task = get_task(task_name)
    tag = prompt or sampling.prompt
    if queries is not None and tag not in ("auto", "none"):
        raise PreferError(
            f"sampling.prompt: {tag}: a control tag prompts unprompted samples only; use auto with prompts"
        )
    controls = resolve_controls(
        prompt="none" if queries is not None else tag,
        block=sampling.block,
        conditional=bool(info.get("control_tokens_trained")),
    )
    texts, ended = generate_texts(
        model,
        tokenizer,
        controls,
        num_samples=samples_per_prompt if queries is not None else num_samples or sampling.num_samples,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        batch_size=sampling.batch_size,
        seed=sampling.seed,
        progress=progress,
        keep_controls=True,
        queries=queries,
    )
    clean = [strip_controls(text) for text in texts]
    scorers = {name: get_scorer(name) for name in task.eval_scorers}
    prompts = None if queries is None else [t for t in queries.texts for _ in range(samples_per_prompt)]
    results = score_texts(
        clean,
        scorers,
        threshold=task.sample_threshold,
        prompts=prompts,
        num_prompts=None if queries is None else len(queries),
    )
    if queries is not None:
        results.update({"prompts": queries.texts, "samples_per_prompt": samples_per_prompt})
    results.update(
        {
            "task": task.name,
            "prompt": controls.prompt,
            "blocked": controls.block,
            "fraction_ended": ended,
            "samples": clean,
            "samples_with_controls": texts,
        }
    )
    return results


def checkpoint_task(path: str | Path, task: str | None) -> str:
    """The task a checkpoint is judged on (`task` if given, else the one prefer recorded), read before the model
    loads, so that the task's scorers can be checked first; PreferError when `path` is not a model directory (as
    `load_checkpoint` says it) or names no task. A named source (prefer.models.sources) needs `task`."""
    if task is None and not is_model_source(path):
        path = Path(path)
        if not path.is_dir():
            raise PreferError(f"checkpoint: {path} is not a directory")
        if not (path / "config.json").is_file():
            final = (path / "final" / "config.json").is_file()
            hint = f"; it is a run directory: pass {path / 'final'}" if final else ""
            raise PreferError(f"checkpoint: {path} is not a model directory (no config.json){hint}")
        task = checkpoint_record.read(path).task
    if task is None:
        raise PreferError(f"task: {path} was not written by prefer; pass task=pii|pep8|toxicity")
    return task


def load_for_task(path: str | Path, task: str | None, device) -> tuple[torch.nn.Module, object, dict, str]:
    """`load_checkpoint` plus the task to judge it on: `task` if given, else the one prefer recorded."""
    model, tokenizer, info = load_checkpoint(path, device)
    task_name = task or info.get("task")
    if task_name is None:
        raise PreferError(f"task: {path} was not written by prefer; pass task=pii|pep8|toxicity")
    return model, tokenizer, info, task_name


def write_samples(path: str | Path, texts: list[str], with_controls: list[str] | None = None) -> None:
    """JSON lines {"text": what was scored, "with_controls": the same sample with the control tokens it wrote}."""
    with_controls = with_controls or texts
    with atomic_path(path) as tmp:
        tmp.write_text(
            "".join(
                json.dumps({"text": text, "with_controls": controlled}) + "\n"
                for text, controlled in zip(texts, with_controls)
            )
        )
