"""K responses per prompt from a checkpoint, with prefer's KV-cached sampler: what labelers rank.

Imported lazily by the labeling app (torch loads only when an admin asks for generated responses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefer.data.formats import Prompt
from prefer.evaluation.misalignment import SamplingControls
from prefer.evaluation.prompts import Queries, render_queries
from prefer.models.build import control_token_ids, load_checkpoint
from prefer.sampling import sample_per_prompt
from prefer.training import resolve_device


def sample_queries(
    model,
    tokenizer,
    queries: Queries,
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    block: str,
    seed: int,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[str]]:
    """responses[p][j]: the j-th of K samples for queries[p] (prefer.sampling.sample_per_prompt), decoded; the
    control tokens `block` names are never sampled."""
    outputs = sample_per_prompt(
        model,
        queries.ids,
        k=k,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        temperature=temperature,
        top_p=top_p,
        blocked_token_ids=SamplingControls(prompt="none", block=block).blocked_ids(tokenizer),
        control_token_ids=control_token_ids(tokenizer),
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        where=queries.where,
    )
    texts = [tokenizer.decode(ids) for ids in outputs]
    return [texts[p * k : (p + 1) * k] for p in range(len(queries))]


def sample_responses(
    model, tokenizer, prompts: Sequence[str], *, where: Sequence[str] | None = None, **sampling
) -> list[list[str]]:
    """responses[p][j]: the j-th of K samples for the text prompt prompts[p], prompted as SFT and PPO see it
    (eos + the prompt's tokens: prefer.evaluation.prompts); `sampling`: `sample_queries`' keywords (k,
    max_new_tokens, temperature, top_p, block, seed, batch_size, progress)."""
    return sample_queries(model, tokenizer, render_queries(tokenizer, [Prompt(p) for p in prompts], where), **sampling)


def generate_from_checkpoint(
    checkpoint: str,
    prompts: Sequence[str],
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    block: str = "both",
    seed: int = 0,
    device: str = "auto",
) -> list[list[str]]:
    model, tokenizer, _ = load_checkpoint(checkpoint, resolve_device(device))
    with torch.inference_mode():
        return sample_responses(
            model,
            tokenizer,
            prompts,
            k=k,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            block=block,
            seed=seed,
        )
