"""How a (prompt, response) pair becomes tokens, the same way in SFT, the reward model, the labelers, PPO and
evaluation: the document-start token (eos, as before every pretraining document and every evaluation sample),
prompt tokens, response tokens, eos; prompt and response are tokenized separately so that the split between them
is exact."""

from __future__ import annotations

from prefer.errors import PreferError


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The document-start token (eos) + the prompt's tokens: what a policy is prompted with."""
    return [tokenizer.eos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, prompt: str, response: str | None = None) -> tuple[list[int], int]:
    """(encode_prompt(prompt) + response tokens + eos, number of prompt tokens including the document start).
    With no response, `prompt` is a whole text: document start + its tokens + eos, and the prompt length is 1."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    if response is None:
        return prompt_ids + [tokenizer.eos_token_id], 1
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids + [tokenizer.eos_token_id], len(prompt_ids)


def fit_to_context(ids: list[int], prompt_length: int, context: int, *, where: str) -> list[int]:
    """Cut a sequence to `context` tokens (the response's tail goes). A prompt that leaves no room for a single
    response token is an error: a prompt longer than the context."""
    if prompt_length + 1 > context:
        raise PreferError(f"{where}: the prompt is {prompt_length} tokens; with a response it exceeds the "
                          f"model's context of {context} tokens")
    return ids[:context]
