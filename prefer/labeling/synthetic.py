"""Synthetic labelers: sample K responses per prompt, rank them by a gold scorer, write rankings and demonstrations.

    prompts JSONL -> K samples each (KV-cached sampler) -> gold misalignment of prompt + response (+ noise)
    -> ranks (lower is better; equal scores tie) -> rankings JSONL + best-of-K demonstrations JSONL
    -> optionally binary feedback JSONL (KTO): every non-empty response marked good or bad (`binary_labels`)

A {"messages"} prompt is rendered with the model's chat template (prefer.evaluation.prompts, as PPO renders it),
and the rankings and demonstrations carry that rendered prompt: the reward model, DPO and SFT then read the format
the policy was prompted with. Both files are written atomically, and only once every prompt has been labelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefer.config import LabelConfig
from prefer.data.feedback import Feedback, write_feedback
from prefer.data.formats import Comparison, Demonstration, write_demonstrations, write_rankings
from prefer.errors import PreferError
from prefer.evaluation.prompts import read_prompt_file, render_queries
from prefer.labeling.responses import sample_queries
from prefer.models.build import load_checkpoint
from prefer.scorers import Scorer, check_available, get_scorer, score_responses
from prefer.training import resolve_device


class NothingRanked(PreferError):
    """Every prompt was dropped (all its responses tied, or fewer than two non-empty): no ranking to write."""


@dataclass(frozen=True)
class LabelReport:
    """What one labelling run wrote, and what it left out."""

    rankings: Path
    demonstrations: Path
    prompts: int  # prompts read
    comparisons: int  # rankings written
    demonstrations_written: int
    dropped_all_tied: int  # prompts whose responses all scored the same: no preference to learn
    dropped_empty: int  # prompts with fewer than two non-empty responses
    gold_mean: float  # mean gold misalignment of all non-empty samples
    gold_best_mean: float  # mean gold misalignment of the demonstrations (best of K by the noisy labeler)
    feedback: Path | None = None  # binary feedback, when asked for (feedback_out)
    feedback_examples: int = 0  # responses marked good or bad
    feedback_desirable: int = 0  # of them, marked good


def binary_labels(noisy: np.ndarray) -> np.ndarray:
    """The synthetic labelers' thumbs up or down: a response is good when the noisy score its labeler ranked it by
    is at most the median of the noisy scores of all the labelled responses (one bar for every prompt, as a labeler
    judging a single response has no other response to compare it with). When many responses share the median's
    score (a pass/fail judge such as IFEval's, where most responses may fail), the tie goes to whichever side leaves
    the share of good responses closer to half: "at most the median" would call every response good when more
    than half fail, "below it" none when more than half pass. NaN (an empty response) is neither: the caller leaves
    it out. No random number is drawn: the rankings' noise is the labels' noise."""
    bar = np.nanmedian(noisy)
    at_most, below = noisy <= bar, noisy < bar
    half = np.count_nonzero(~np.isnan(noisy)) / 2
    return at_most if abs(np.count_nonzero(at_most) - half) <= abs(np.count_nonzero(below) - half) else below


def rank_by_scores(scores: Sequence[float]) -> tuple[int, ...]:
    """Dense ranks: 0 for the lowest misalignment (the best); equal scores share a rank (a tie)."""
    return tuple(int(rank) for rank in np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)[1])


def label_synthetic(
    config: LabelConfig, *, scorer: Scorer | None = None, progress: bool = True, feedback_out: str | Path | None = None
) -> LabelReport:
    """Label every prompt of `config.prompts`; `scorer` overrides `config.scorer` (any texts -> misalignment);
    with `feedback_out`, every non-empty response marked good or bad (`binary_labels`) is written there as well, in
    TRL's unpaired format {"prompt", "completion", "label"} (prefer.data.feedback), prompt-major."""
    device = resolve_device(config.runtime.device)
    if scorer is None:
        check_available(config.scorer)  # a missing package or weights file stops here, before the model loads
    gold = scorer if scorer is not None else get_scorer(config.scorer)
    prompt_records, locations = read_prompt_file(config.prompts)  # a bad line is reported before the model loads
    model, tokenizer, _ = load_checkpoint(config.model, device)
    queries = render_queries(tokenizer, prompt_records, locations)  # as SFT and PPO see them
    prompts = queries.texts

    # 1. K samples per prompt, prompt-major: responses[p * K + k].
    k = config.num_responses
    responses = [
        response
        for group in sample_queries(
            model,
            tokenizer,
            queries,
            k=k,
            max_new_tokens=config.generation.max_new_tokens,
            temperature=config.generation.temperature,
            top_p=config.generation.top_p,
            block=config.block,
            seed=config.runtime.seed,
            batch_size=config.batch_size,
            progress=progress,
        )
        for response in group
    ]

    # 2. Gold misalignment of what a reader sees (prompt + response), plus the labelers' noise. Noise is relative
    # to the spread of the scores, so `noise=1` confuses labelers about as much as the scores differ.
    # A reward-model scorer reads the pair split exactly as it was trained (score_pairs), not the joined text.
    nonempty = np.array([bool(response.strip()) for response in responses])
    kept_prompts = [prompts[i // k] for i in range(len(responses)) if nonempty[i]]
    kept_responses = [response for response, keep in zip(responses, nonempty) if keep]
    scores = np.full(len(responses), np.nan)
    if kept_responses:
        scores[nonempty] = score_responses(gold, kept_prompts, kept_responses)
    spread = float(np.std(scores[nonempty])) if nonempty.any() else 0.0
    noise = np.random.default_rng(config.runtime.seed).normal(0.0, config.noise * spread, size=len(scores))
    noisy = scores + noise if config.noise > 0 else scores

    # 3. Ranks per prompt (ties kept, all-tie prompts dropped) and the best response as a demonstration.
    comparisons, demonstrations, best_scores = [], [], []
    dropped_tied = dropped_empty = 0
    for p, prompt in enumerate(prompts):
        kept = [i for i in range(p * k, (p + 1) * k) if nonempty[i]]
        if kept:
            best = min(kept, key=lambda i: noisy[i])  # the first of equally good responses
            demonstrations.append(Demonstration(prompt, responses[best]))
            best_scores.append(scores[best])
        if len(kept) < 2:
            dropped_empty += 1
            continue
        ranks = rank_by_scores([noisy[i] for i in kept])
        if len(set(ranks)) == 1:
            dropped_tied += 1
            continue
        comparisons.append(Comparison(prompt, tuple(responses[i] for i in kept), ranks))
    if not comparisons:
        raise NothingRanked(
            f"{config.prompts}: no prompt got a ranking ({dropped_tied} all tied, {dropped_empty} with "
            "fewer than two non-empty responses); nothing written"
        )
    write_rankings(config.rankings_out, comparisons)
    write_demonstrations(config.demonstrations_out, demonstrations)
    feedback = []
    if feedback_out is not None:
        good = binary_labels(noisy[nonempty])
        feedback = [
            Feedback(prompts[i // k], responses[i], bool(label)) for i, label in zip(np.flatnonzero(nonempty), good)
        ]
        write_feedback(feedback_out, feedback)
    return LabelReport(
        rankings=Path(config.rankings_out),
        demonstrations=Path(config.demonstrations_out),
        prompts=len(prompts),
        comparisons=len(comparisons),
        demonstrations_written=len(demonstrations),
        dropped_all_tied=dropped_tied,
        dropped_empty=dropped_empty,
        gold_mean=float(np.mean(scores[nonempty])),
        gold_best_mean=float(np.mean(best_scores)),
        feedback=None if feedback_out is None else Path(feedback_out),
        feedback_examples=len(feedback),
        feedback_desirable=sum(f.label for f in feedback),
    )
