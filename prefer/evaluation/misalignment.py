"""Misalignment of a model's samples (Korbak et al. 2023, Sec. 3): sample N unconditional continuations of the
document-start token, score each with the task's scorers, aggregate.

Reported per scorer: the mean over samples (with a bootstrap interval), the pooled per-character score (total
matches / total characters; robust to samples of different lengths), the fraction of samples above the
threshold, the expected maximum over 25 samples, and the diversity of the samples (distinct-n).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prefer.config import SamplingConfig
from prefer.errors import PreferError
from prefer.evaluation.metrics import (
    bootstrap_ci,
    distinct_n,
    expected_max,
    fraction_above,
    pooled_score,
)
from prefer.files import atomic_path
from prefer.models.build import BAD, GOOD, control_token_ids, load_checkpoint
from prefer.sampling import sample
from prefer.scorers import Scorer, get_scorer
from prefer.tasks import get_task


@dataclass(frozen=True)
class SamplingControls:
    """What the sampler is told about control tokens, resolved from the `prompt`/`block` options."""

    prompt: str  # none | good | bad
    block: str  # none | bad | good | both

    def prompt_ids(self, tokenizer) -> list[int]:
        tags = {"none": [], "good": [GOOD], "bad": [BAD]}[self.prompt]
        return [tokenizer.eos_token_id] + [tokenizer.convert_tokens_to_ids(t) for t in tags]

    def blocked_ids(self, tokenizer) -> list[int]:
        tags = {"none": [], "bad": [BAD], "good": [GOOD], "both": [GOOD, BAD]}[self.block]
        return [tokenizer.convert_tokens_to_ids(t) for t in tags]


def resolve_controls(*, prompt: str, block: str, conditional: bool) -> SamplingControls:
    """`auto`: a conditionally trained model is prompted with `<|good|>` and never samples `<|bad|>` (it keeps
    emitting `<|good|>` before each line, as in training); any other model never saw the tags and may not emit
    them. Prompting with `bad` blocks `<|good|>` instead: the mirror image of the headline protocol, so every
    line is conditioned on `<|bad|>` (the model cannot switch back to `<|good|>` after the first line), the
    contrast that shows the tag steers."""
    if prompt == "auto":
        prompt = "good" if conditional else "none"
    if block == "auto":
        block = {"good": "bad", "bad": "good", "none": "bad" if conditional else "both"}[prompt]
    return SamplingControls(prompt=prompt, block=block)


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
) -> tuple[list[str], float]:
    """N samples decoded without special tokens (keep_controls: with the `<|good|>`/`<|bad|>` the model wrote, which
    `strip_controls` removes), and the fraction of them that ended on `<|endoftext|>`."""
    control_ids = control_token_ids(tokenizer)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs = sample(
        model,
        [controls.prompt_ids(tokenizer)] * num_samples,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        temperature=temperature,
        top_p=top_p,
        blocked_token_ids=controls.blocked_ids(tokenizer),
        control_token_ids=control_ids,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
    )
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


def score_texts(texts: Sequence[str], scorers: Mapping[str, Scorer], *, threshold: float) -> dict:
    """Aggregate misalignment of texts under each scorer, plus diversity; per-sample scores included."""
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
        scores = np.asarray(scorer(list(texts)), dtype=float)
        low, high = bootstrap_ci(scores)
        pooled_low, pooled_high = _pooled_ci(scores, lengths)
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
) -> dict:
    """Draw samples under the sampling protocol and score them with every scorer of the task."""
    task = get_task(task_name)
    controls = resolve_controls(
        prompt=prompt or sampling.prompt, block=sampling.block, conditional=bool(info.get("control_tokens_trained"))
    )
    texts, ended = generate_texts(
        model,
        tokenizer,
        controls,
        num_samples=num_samples or sampling.num_samples,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        batch_size=sampling.batch_size,
        seed=sampling.seed,
        progress=progress,
        keep_controls=True,
    )
    clean = [strip_controls(text) for text in texts]
    scorers = {name: get_scorer(name) for name in task.eval_scorers}
    results = score_texts(clean, scorers, threshold=task.sample_threshold)
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
