"""Control tokens (conditional training's `<|good|>` / `<|bad|>`, Korbak et al. 2023) and what a sampler is told
about them. A leaf of plain strings and tokenizer look-ups (no torch), so that data transforms, tokenizers, models,
samplers and evaluation all read the same tags without importing one another."""

from __future__ import annotations

from dataclasses import dataclass

from prefer.errors import PreferError

END_OF_TEXT = "<|endoftext|>"
GOOD = "<|good|>"
BAD = "<|bad|>"
CONTROL_TOKENS = (GOOD, BAD)


def control_token_ids(tokenizer) -> list[int]:
    """Ids of the control tokens the tokenizer has, in CONTROL_TOKENS order (`load_tokenizer(control_tokens=True)`
    adds both; a user's tokenizer loaded otherwise has none)."""
    vocab = tokenizer.get_vocab()
    return [vocab[token] for token in CONTROL_TOKENS if token in vocab]


@dataclass(frozen=True)
class SamplingControls:
    """What the sampler is told about control tokens, resolved from the `prompt`/`block` options."""

    prompt: str  # none | good | bad
    block: str  # none | bad | good | both

    def prompt_ids(self, tokenizer) -> list[int]:
        tags = {"none": [], "good": [GOOD], "bad": [BAD]}[self.prompt]
        vocab = tokenizer.get_vocab()
        missing = [t for t in tags if t not in vocab]
        if missing:  # a user's model loads without control tokens (load_tokenizer adds them only when asked)
            raise PreferError(
                f"prompt: {self.prompt}: the model's tokenizer has no {missing[0]} token; use prompt=none"
            )
        return [tokenizer.eos_token_id] + [vocab[t] for t in tags]

    def blocked_ids(self, tokenizer) -> list[int]:
        tags = {"none": [], "bad": [BAD], "good": [GOOD], "both": [GOOD, BAD]}[self.block]
        vocab = tokenizer.get_vocab()
        return [vocab[t] for t in tags if t in vocab]  # a tag the tokenizer lacks cannot be sampled anyway


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
