"""From prompts to scored episodes, and what an RL run writes beside its metrics: seeded sampling on every rank,
prompts, PPO-ptx blocks and gradients, the sample table."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from prefer.data.annotate import AnnotatedDocument
from prefer.data.corpora import load_documents, split_by_source
from prefer.data.formats import read_prompts, record_locations
from prefer.data.packing import TokenBlocks, pack_documents
from prefer.encoding import encode_query, render_generation_prompt
from prefer.errors import PreferError
from prefer.files import atomic_path
from prefer.objectives import mle_loss, next_token_targets, proxy_rewards
from prefer.rl.rollout import Rollout, gather_rollout, make_rollout
from prefer.sampling import Decoding, sample
from prefer.scorers import score_responses
from prefer.training import (
    Distributed,
    MetricsLog,
    accumulate_stats,
    all_gather_rows,
    autocast,
    gradient_sync,
    unsharded,
    unwrap,
)

__all__ = [
    "ScoredEpisodes",
    "log_samples",
    "pretraining_blocks",
    "ptx_backward",
    "read_queries",
    "rollout_batch",
    "sample_responses",
    "samples_log",
    "sampling_chunk",
    "score_episodes",
]


def sampling_chunk(sample_batch_size: int | None, *, micro_batch_size: int, episodes_per_rank: int) -> int:
    """Episodes per KV-cached sampling loop: `rollout.sample_batch_size`, or the micro-batch when unset. It must
    divide each rank's episodes, so that every chunk (and its generator's seed) is the same on any number of ranks."""
    chunk = sample_batch_size or micro_batch_size
    if episodes_per_rank % chunk:
        raise PreferError(
            f"config: rollout.sample_batch_size {chunk} must divide each rank's episodes per iteration "
            f"({episodes_per_rank})"
        )
    return chunk


def sample_responses(
    policy,
    queries: list[list[int]],
    *,
    first: int,
    chunk: int,
    seed: int,
    iteration: int,
    max_new_tokens: int,
    eos_token_id: int,
    temperature: float,
) -> list[list[int]]:
    """Responses to `queries`, the episodes first, first + 1, ... of an iteration's global batch, sampled in chunks
    of `chunk` episodes, each chunk with its own generator seeded by (seed, iteration, chunk's index in the global
    batch). An episode's response therefore depends on the run's seed and sampling chunk (`sampling_chunk`), not on
    how many ranks share the batch nor which one draws it; `first` must be a multiple of `chunk`."""
    responses: list[list[int]] = []
    decoding = Decoding(max_new_tokens, eos_token_id, temperature, top_p=1.0, batch_size=chunk)
    for start in range(0, len(queries), chunk):
        index = (first + start) // chunk
        entropy = np.random.SeedSequence([seed, iteration, index]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(entropy))
        responses += sample(policy, queries[start : start + chunk], decoding, generator=generator)
    return responses


@dataclass(frozen=True)
class ScoredEpisodes:
    """Sampled responses made into episodes and scored (N episodes).

    responses: N token lists, eos appended where the policy stopped (stopping is an action; its reward lands there)
    texts:     N strings, prompt + decoded response (what a text scorer and the gold scorer read)
    stopped:   [N] bool, the response ended before max_new_tokens
    rewards:   [N] float, proxy reward: -misalignment, less the missing-eos penalty
    gold:      [N] float, -gold misalignment (logged, never rewarded); NaN without a gold scorer
    seconds:   wall time of this rank's phases of the iteration: generate, score, logprobs (rollout_batch)
    """

    responses: list[list[int]]
    texts: list[str]
    stopped: torch.Tensor
    rewards: torch.Tensor
    gold: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)


def score_episodes(
    sampled: list[list[int]],
    prompts: list[str],
    tokenizer,
    *,
    scorer,
    gold_scorer,
    max_new_tokens: int,
    missing_eos_penalty: float | None,
) -> ScoredEpisodes:
    """The step between sampling and the rollout, shared by PPO and the critic-free stages. A reward model reads
    (prompt, response) tokenized apart, exactly as it was trained and as the labelers score (the joined text can
    tokenize differently across the seam, e.g. "):\n" + "    return"): `score_responses`."""
    eos = tokenizer.eos_token_id
    stopped = torch.tensor([len(r) < max_new_tokens for r in sampled])
    responses = [r + [eos] if s else r for r, s in zip(sampled, stopped.tolist())]
    replies = [tokenizer.decode(r, skip_special_tokens=True) for r in sampled]
    texts = [prompt + reply for prompt, reply in zip(prompts, replies)]
    rewards = proxy_rewards(
        score_responses(scorer, prompts, replies), stopped=stopped, missing_eos_penalty=missing_eos_penalty
    )
    gold = (
        -torch.tensor(score_responses(gold_scorer, prompts, replies), dtype=torch.float32)  # as evaluation reads it
        if gold_scorer is not None
        else torch.full_like(rewards, float("nan"))
    )
    return ScoredEpisodes(responses, texts, stopped, rewards, gold)


def read_queries(path: str, tokenizer, *, max_length: int) -> tuple[list[str], list[list[int]]]:
    """Prompts and their token ids: eos (the document start the model was trained with) + the prompt's tokens, or
    for a conversation its rendering with the chat template and the generation prompt (plainly without a template;
    prefer.encoding.encode_query). The returned texts are what the scorers see as the prompt."""
    prompts, queries = [], []
    for prompt, where in zip(read_prompts(path), record_locations(path)):
        ids = encode_query(tokenizer, prompt.prompt, prompt.messages)
        if len(ids) > max_length:
            raise PreferError(
                f"{where}: the prompt is {len(ids)} tokens; with max_new_tokens it must fit "
                f"the model's context (at most {max_length} prompt tokens)"
            )
        prompts.append(
            prompt.prompt if prompt.messages is None else render_generation_prompt(tokenizer, prompt.messages)
        )
        queries.append(ids)
    return prompts, queries


def pretraining_blocks(
    source: str, tokenizer, *, block_size: int, max_bytes: int | None
) -> tuple[TokenBlocks, TokenBlocks]:
    """(train, held-out) blocks of a pretraining corpus for PPO-ptx; scores are unused (zero)."""
    documents, _ = load_documents(source, max_bytes=max_bytes)
    annotated = [AnnotatedDocument(d.segments, (0.0,) * len(d.segments), d.source) for d in documents]
    train, validation = split_by_source(annotated, validation_fraction=0.05)
    blocks = (
        pack_documents(train, tokenizer, block_size=block_size),
        pack_documents(validation, tokenizer, block_size=block_size),
    )
    if len(blocks[0]) == 0 or len(blocks[1]) == 0:
        raise PreferError(
            f"ptx.source: {source!r} is too small for one training and one held-out block of {block_size} tokens"
        )
    return blocks


def ptx_backward(
    policy,
    blocks: torch.Tensor,
    *,
    ptx_coef: float,
    micro_batch_size: int,
    device,
    precision: str,
    num_tokens: float | None = None,
) -> dict[str, float]:
    """Accumulate the gradient of ptx_coef x (mean NLL of pretraining blocks [N, T]): minimising it maximises
    gamma E_pretrain[log pi(x)] of Ouyang et al. 2022, Eq. 2. Normalised by `num_tokens`, the step's pretraining
    tokens (None = N x (T - 1); under torchrun: all ranks' blocks, divided by the number of ranks). The policy's
    gradients are reduced over the ranks in the last micro-batch."""
    num_tokens = blocks.shape[0] * (blocks.shape[1] - 1) if num_tokens is None else num_tokens
    totals: dict[str, float] = {}
    starts = range(0, blocks.shape[0], micro_batch_size)
    for start in starts:
        ids = blocks[start : start + micro_batch_size].to(device)
        (targets,) = next_token_targets(ids)  # [N, T - 1]
        with gradient_sync([policy], sync=start == starts[-1]):
            with autocast(device, precision):
                logits = policy(ids).logits[:, :-1]
            loss, _ = mle_loss(
                logits.float(), targets, torch.ones_like(targets, dtype=torch.bool), num_tokens=num_tokens
            )
            (ptx_coef * loss).backward()
        accumulate_stats(totals, {"ptx/loss": loss.detach()}, fraction=1.0)
    return totals


def samples_log(run_dir: Path, *, resume_step: int | None) -> Path:
    """samples.jsonl, trimmed like metrics.jsonl on resume (iterations after the checkpoint are about to rerun)."""
    path = run_dir / "samples.jsonl"
    if path.exists():
        kept = (
            [line for line in path.read_text().splitlines() if json.loads(line)["iteration"] <= resume_step]
            if resume_step is not None
            else []
        )
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    return path


def log_samples(
    path: Path, log: MetricsLog, iteration: int, prompts: list[str], texts: list[str], rollout: Rollout, count: int
) -> None:
    rows = [
        {
            "iteration": iteration,
            "prompt": prompt,
            "response": text[len(prompt) :],
            "proxy": rollout.episode_rewards[i].item(),
            "gold": None if rollout.gold[i].isnan() else rollout.gold[i].item(),
        }
        for i, (prompt, text) in enumerate(zip(prompts[:count], texts[:count]))
    ]
    with path.open("a") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if rows:
        table = "\n\n".join(
            f"**proxy {r['proxy']:.3f}, gold {r['gold']}** `{r['prompt']}` -> `{r['response']}`" for r in rows
        )
        log.log_text("samples", table, iteration)


def rollout_batch(
    policy,
    reference,
    value_model,
    tokenizer,
    prompts: list[str],
    queries: list[list[int]],
    *,
    dist: Distributed,
    chunk: int,
    seed: int,
    iteration: int,
    max_new_tokens: int,
    temperature: float,
    scorer,
    gold_scorer,
    missing_eos_penalty: float | None,
    batch_size: int,
    device,
    precision: str,
    policy_logprobs: bool = True,
) -> tuple[Rollout, torch.Tensor, ScoredEpisodes]:
    """This rank's episodes of an iteration (its contiguous share of the global batch; a prompt's K samples
    contiguous), KV-cached at the training temperature, truncated at eos, seeded by (iteration, chunk of the global
    batch) so that a resumed run or another number of ranks draws the same; scored (+ gold); made into a Rollout
    (old, reference log-probs and values; `policy_logprobs=False`: the old ones NaN, for the update to fill) and
    gathered, so that every rank holds the global batch. Returns
    (rollout of the global batch, stopped [N] of the global batch, this rank's scored episodes)."""
    eos = tokenizer.eos_token_id
    started = time.perf_counter()
    with unsharded(policy):  # FSDP2: ranks stop sampling at different steps, so no collective per step
        sampled = sample_responses(
            unwrap(policy),
            queries,
            first=dist.rank * len(queries),
            chunk=chunk,
            seed=seed,
            iteration=iteration,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            temperature=temperature,
        )
    # The sampler drops the eos; score_episodes puts it back: stopping is an action of the policy.
    generated = time.perf_counter()
    scored = score_episodes(
        sampled,
        prompts,
        tokenizer,
        scorer=scorer,
        gold_scorer=gold_scorer,
        max_new_tokens=max_new_tokens,
        missing_eos_penalty=missing_eos_penalty,
    )
    scored_at = time.perf_counter()
    rollout = make_rollout(
        unwrap(policy),
        reference,
        None if value_model is None else unwrap(value_model),
        queries,
        scored.responses,
        rewards=scored.rewards,
        gold=scored.gold,
        temperature=temperature,
        pad_id=eos,
        batch_size=batch_size,
        device=device,
        precision=precision,
        policy_logprobs=policy_logprobs,
    )
    done = time.perf_counter()
    seconds = {"generate": generated - started, "score": scored_at - generated, "logprobs": done - scored_at}
    return (
        gather_rollout(rollout, dist, pad_id=eos),
        all_gather_rows(scored.stopped, dist),
        replace(scored, seconds=seconds),
    )
