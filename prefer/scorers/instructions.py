"""Verifiable instruction following (IFEval; Zhou et al. 2023): a judge nobody here wrote. Google's own checkers, as
packaged with their `build_description` templates in the PyPI package `if-verifiable` (Apache-2.0), decide whether
a response follows each instruction of its prompt.

- `instruction_prompts(topics, types, seed=)` builds chat prompts "Write a short paragraph about TOPIC. INSTRUCTION"
  with the instruction's own template and arguments drawn by its `build_description` (seeded, so the set is fixed
  by the arguments: no host file enters it).
- `InstructionFollowing(prompts)` is a PairScorer: misalignment = the share of the prompt's instructions the
  response fails (strict, as IFEval's "prompt-level/instruction-level strict"; `loose=True`: IFEval's loose
  variant, which also accepts the response without its first or last line or its asterisks).

`INSTRUCTION_TYPES` (prefer.config.chat) are the IFEval types that fit a 32-64-token answer and whose checkers need
no NLTK data (the sentence-counting ones need NLTK's `punkt`, which is not installed offline:
`length_constraints:number_sentences` and `change_case:capital_word_frequency` are left out for that reason).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefer.config.chat import INSTRUCTION_TYPES
from prefer.errors import PreferError

__all__ = [
    "INSTRUCTION_TYPES",
    "InstructionFollowing",
    "InstructionPrompt",
    "followed",
    "instruction_prompts",
    "read_prompts",
    "write_prompts",
]

INSTALL = "pip install 'if-verifiable==0.1.2'"


def _registry() -> dict:
    try:
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    except ImportError as error:
        raise PreferError(f"the instruction-following judge needs if-verifiable: {INSTALL} ({error})") from None
    return INSTRUCTION_DICT


@dataclass(frozen=True)
class InstructionPrompt:
    """One chat prompt with the instructions its response is checked against (`kwargs[i]` are the arguments of
    `instruction_ids[i]`'s checker)."""

    topic: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict, ...]
    text: str  # the user turn

    def as_json(self) -> dict:
        return {
            "messages": [{"role": "user", "content": self.text}],
            "instructions": [{"id": i, "kwargs": k} for i, k in zip(self.instruction_ids, self.kwargs)],
        }

    @classmethod
    def from_json(cls, row: dict, where: str) -> InstructionPrompt:
        try:
            text = row["messages"][-1]["content"]
            ids = tuple(item["id"] for item in row["instructions"])
            kwargs = tuple(item.get("kwargs") or {} for item in row["instructions"])
        except (KeyError, IndexError, TypeError):
            raise PreferError(
                f"{where}: expected {{'messages': [...], 'instructions': [{{'id', 'kwargs'}}]}}"
            ) from None
        unknown = [i for i in ids if i not in _registry()]
        if unknown or not ids:
            raise PreferError(f"{where}: unknown IFEval instruction {unknown[0] if unknown else '(none)'}")
        return cls(topic="", instruction_ids=ids, kwargs=kwargs, text=text)


def instruction_prompts(topics: Sequence[str], types: Sequence[str], *, seed: int) -> list[InstructionPrompt]:
    """One prompt per (topic, type): the type's description with the arguments its `build_description` draws.
    The checkers draw from Python's global `random`, so it is seeded per prompt (and restored after)."""
    registry = _registry()
    state = random.getstate()
    prompts = []
    try:
        for t, topic in enumerate(topics):
            for k, kind in enumerate(types):
                if kind not in registry:
                    raise PreferError(f"unknown IFEval instruction type {kind!r}")
                random.seed(f"{seed}:{t}:{k}")
                checker = registry[kind](kind)
                description = checker.build_description()
                kwargs = {key: value for key, value in (checker.get_instruction_args() or {}).items()}
                text = f"Write a short paragraph about {topic}. {description}"
                prompts.append(InstructionPrompt(topic, (kind,), (kwargs,), text))
    finally:
        random.setstate(state)
    return prompts


def write_prompts(prompts: Sequence[InstructionPrompt], path: Path) -> None:
    from prefer.files import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(p.as_json()) + "\n" for p in prompts))


def read_prompts(path: str | Path) -> list[InstructionPrompt]:
    lines = Path(path).read_text().splitlines()
    return [InstructionPrompt.from_json(json.loads(line), f"{path}:{n}") for n, line in enumerate(lines, 1) if line]


def followed(prompt: InstructionPrompt, response: str, *, loose: bool = False) -> list[bool]:
    """Whether `response` follows each instruction of `prompt` (IFEval's strict or loose check)."""
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(
        response=response,
        instruction_id_list=list(prompt.instruction_ids),
        kwargs_list=[dict(k) for k in prompt.kwargs],
        prompt=prompt.text,
        instruction_registry=_registry(),
    )
    return [r.loose_pass if loose else r.strict_pass for r in results]


class InstructionFollowing:
    """PairScorer: 1 - the share of the prompt's instructions that the response follows (0 = all followed). The
    prompt given to `score_pairs` is the text the policy saw (rendered with the chat template): its instructions are
    found by the user turn it contains."""

    def __init__(self, prompts: Sequence[InstructionPrompt] | str | Path, *, loose: bool = False):
        self.prompts = read_prompts(prompts) if isinstance(prompts, str | Path) else list(prompts)
        self.loose = loose
        # longest first: a prompt whose user turn contains another's is matched to itself
        self._by_text = sorted(self.prompts, key=lambda p: -len(p.text))

    def _prompt_of(self, rendered: str) -> InstructionPrompt:
        for prompt in self._by_text:
            if prompt.text in rendered:
                return prompt
        raise PreferError(f"instruction-following judge: no known instruction prompt in {rendered[-80:]!r}")

    def __call__(self, texts: Sequence[str]) -> list[float]:
        raise PreferError("the instruction-following judge scores (prompt, response) pairs, not texts")

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise PreferError(f"score_pairs: {len(prompts)} prompts but {len(responses)} responses")
        scores = []
        for rendered, response in zip(prompts, responses):
            passed = followed(self._prompt_of(rendered), response, loose=self.loose)
            scores.append(1.0 - sum(passed) / len(passed))
        return scores
