"""K responses per prompt from a checkpoint, with prefer's KV-cached sampler: what labelers rank.

Imported lazily by the labeling app (torch loads only when an admin asks for generated responses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefer.data.encoding import encode_prompt
from prefer.errors import PreferError
from prefer.evaluation.misalignment import SamplingControls
from prefer.models.build import context_length, control_token_ids, load_checkpoint
from prefer.sampling import sample
from prefer.training import resolve_device


def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    block: str,
    seed: int,
    batch_size: int = 64,
    progress: bool = False,
    where: Sequence[str] | None = None,
) -> list[list[str]]:
    """responses[p][j]: the j-th of K samples for prompts[p], each prompted as SFT and PPO see it (encode_prompt)."""
    context = context_length(model)
    prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    for i, ids in enumerate(prompt_ids):
        if len(ids) + max_new_tokens - 1 > context:
            name = where[i] if where else f"prompt {i}"
            raise PreferError(
                f"{name}: the prompt is {len(ids)} tokens; with max_new_tokens {max_new_tokens} it "
                f"exceeds the model's context of {context} tokens"
            )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs = sample(
        model,
        [ids for ids in prompt_ids for _ in range(k)],
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        temperature=temperature,
        top_p=top_p,
        blocked_token_ids=SamplingControls(prompt="none", block=block).blocked_ids(tokenizer),
        control_token_ids=control_token_ids(tokenizer),
        batch_size=batch_size,
        generator=generator,
        progress=progress,
    )
    texts = [tokenizer.decode(ids) for ids in outputs]
    return [texts[p * k : (p + 1) * k] for p in range(len(prompts))]


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
