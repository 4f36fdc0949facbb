"""K responses per prompt from a model, with prefer's KV-cached sampler: what labelers rank.

Imported lazily by the labeling app (torch loads only when an admin asks for generated responses).
"""

from __future__ import annotations

from collections.abc import Sequence

from prefer.controls import SamplingControls, control_token_ids
from prefer.evaluation.prompts import Queries, command_line_prompts, render_queries
from prefer.sampling import Decoding, sample_per_prompt


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
    blocked = SamplingControls(prompt="none", block=block).blocked_ids(tokenizer)
    decoding = Decoding(
        max_new_tokens, tokenizer.eos_token_id, temperature, top_p, blocked, control_token_ids(tokenizer), batch_size
    )
    outputs = sample_per_prompt(model, queries.ids, decoding, k=k, seed=seed, where=queries.where, progress=progress)
    texts = [tokenizer.decode(ids) for ids in outputs]
    return [texts[p * k : (p + 1) * k] for p in range(len(queries))]


def text_queries(tokenizer, prompts: Sequence[str], where: Sequence[str] | None = None) -> Queries:
    """Text prompts (the labeling app's, which labelers read as written) rendered as `prefer sample --prompt` renders
    them (prefer.evaluation.prompts.command_line_prompts): one user turn with the generation prompt when the
    tokenizer has a chat template, so an instruction model is asked rather than continued (texts[p] is then that
    rendering); otherwise eos + the prompt's tokens, as SFT and PPO see a text prompt (texts[p] the prompt itself)."""
    asked, _ = command_line_prompts(tokenizer, prompts)
    return render_queries(tokenizer, asked, where)
