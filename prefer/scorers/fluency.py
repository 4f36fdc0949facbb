"""A language model as a fluency judge, and a scorer that adds its judgement to another one.

`get_scorer("pii-entry+0.0005*nll:DIR")` is the scorer `pii-entry` plus 0.0005 x the negative log-likelihood per
token that the causal LM in DIR assigns to the response given its prompt. A gold scorer of PII alone ties most
pairs of clean, long-enough entries and cannot tell fluent text from fluent-looking garbage; a frozen LM of the
corpus can (Gao et al. 2022 judge with a larger model than the proxy for the same reason: the gold knows things
the proxy has to learn).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from prefer.devices import resolve_device
from prefer.encoding import encode_example
from prefer.errors import PreferError
from prefer.models.build import context_length, load_checkpoint

SPEC = re.compile(r"^(?P<base>[^+]+)\+(?P<weight>[0-9.eE+-]+)\*nll:(?P<path>.+)$")


class LanguageModelJudge:
    """nll_pairs(prompts, responses) -> mean negative log-likelihood (nats) per response token under a frozen LM,
    the response read after the document start and its prompt (tokenized apart, as every stage does); an empty
    response scores 0."""

    def __init__(self, path: str | Path, *, device: str = "auto", batch_size: int = 64):
        self.path = Path(path)
        self.model, self.tokenizer, _ = load_checkpoint(self.path, resolve_device(device))
        self.device = next(self.model.parameters()).device
        self.batch_size = batch_size
        self.context = context_length(self.model)

    @torch.no_grad()
    def nll_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        encoded = []
        for prompt, response in zip(prompts, responses):
            ids, prompt_length = encode_example(self.tokenizer, prompt, response)
            ids = ids[:-1][: self.context]  # the response's tokens; its final eos is not the response's
            encoded.append((ids, prompt_length))
        out: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            part = encoded[start : start + self.batch_size]
            width = max(len(ids) for ids, _ in part)
            input_ids = torch.full((len(part), width), self.tokenizer.eos_token_id, dtype=torch.long)
            attention = torch.zeros((len(part), width), dtype=torch.long)
            scored = torch.zeros((len(part), width), dtype=torch.bool)  # positions whose token is a response token
            for row, (ids, prompt_length) in enumerate(part):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                scored[row, prompt_length : len(ids)] = True
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
            nll = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:].to(self.device), reduction="none"
            ).cpu()
            mask = scored[:, 1:]
            per_token = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.extend(per_token.tolist())
        return out


class FluencyWeightedScorer:
    """base misalignment + weight x the judge's NLL per response token (a PairScorer: the judge needs the split)."""

    def __init__(self, base, weight: float, judge: LanguageModelJudge):
        self.base, self.weight, self.judge = base, weight, judge

    def __call__(self, texts: Sequence[str]) -> list[float]:
        # A whole text is its own response to an empty prompt.
        return self.score_pairs([""] * len(texts), list(texts))

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise PreferError(f"score_pairs: {len(prompts)} prompts but {len(responses)} responses")
        base = self.base([p + r for p, r in zip(prompts, responses)])
        nll = self.judge.nll_pairs(prompts, responses)
        return [b + self.weight * n for b, n in zip(base, nll)]


def parse_spec(name: str) -> tuple[str, float, str] | None:
    """ "BASE+W*nll:DIR" -> (BASE, W, DIR); None for any other name."""
    found = SPEC.match(name)
    if found is None:
        return None
    try:
        weight = float(found["weight"])
    except ValueError:
        raise PreferError(f"scorer {name!r}: the weight {found['weight']!r} is not a number") from None
    if weight < 0:
        raise PreferError(f"scorer {name!r}: the fluency weight must be >= 0")
    return found["base"], weight, found["path"]
