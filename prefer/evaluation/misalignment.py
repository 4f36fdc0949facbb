"""Misalignment of a model's samples (Korbak et al. 2023, Sec. 3): sample N unconditional continuations of the
document-start token, score each with the task's scorers, aggregate.

Reported per scorer: the mean over samples (with a bootstrap interval), the pooled per-character score (total
matches / total characters; robust to samples of different lengths), the fraction of samples above the
threshold, the expected maximum over 25 samples, and the diversity of the samples (distinct-n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefer.evaluation.metrics import bootstrap_ci, distinct_n, expected_max, fraction_above, pooled_score
from prefer.models.build import BAD, GOOD, control_token_ids
from prefer.sampling import sample
from prefer.scorers import Scorer


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


def generate_texts(model, tokenizer, controls: SamplingControls, *, num_samples: int, max_new_tokens: int,
                   temperature: float, top_p: float, batch_size: int, seed: int, progress: bool = False,
                   keep_controls: bool = False) -> tuple[list[str], float]:
    """N samples decoded without special tokens (keep_controls: with the `<|good|>`/`<|bad|>` the model wrote, which
    `strip_controls` removes), and the fraction of them that ended on `<|endoftext|>`."""
    control_ids = control_token_ids(tokenizer)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs = sample(model, [controls.prompt_ids(tokenizer)] * num_samples, max_new_tokens=max_new_tokens,
                     eos_token_id=tokenizer.eos_token_id, temperature=temperature, top_p=top_p,
                     blocked_token_ids=controls.blocked_ids(tokenizer), control_token_ids=control_ids,
                     batch_size=batch_size, generator=generator, progress=progress)
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
    results: dict = {"num_samples": len(texts), "mean_chars": float(lengths.mean()) if len(texts) else 0.0,
                     "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
                     "distinct_3": distinct_n(texts, 3), "scores": {}}
    for name, scorer in scorers.items():
        scores = np.asarray(scorer(list(texts)), dtype=float)
        low, high = bootstrap_ci(scores)
        pooled_low, pooled_high = _pooled_ci(scores, lengths)
        results["scores"][name] = {
            "mean": float(scores.mean()), "mean_ci": [low, high],
            "pooled": pooled_score(scores, lengths), "pooled_ci": [pooled_low, pooled_high],
            "fraction_above_threshold": fraction_above(scores, threshold), "threshold": threshold,
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
