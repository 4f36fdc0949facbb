"""Prompts for a policy, rendered once and the same way in every command that samples from prompts (`prefer sample`,
`prefer evaluate`, `prefer label --synthetic`, the labeling app) as PPO and GRPO render them
(prefer.rl.episodes.read_queries):

    {"prompt": str}        ids = eos (the document start) + the prompt's tokens; scorers read the prompt as written
    {"messages": [...]}    ids = the chat template's rendering with the generation prompt (plainly `Role: content`
                           lines and `Assistant: ` without a template); scorers, rankings and demonstrations carry
                           that same rendered text, so a reward model or DPO trains on the format the policy saw

A prompt given on the command line (`--prompt TEXT`) is a user turn when the model has a chat template (an
instruction model is asked, not continued) and a plain prompt otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prefer.data.formats import Prompt, read_prompts, record_locations
from prefer.encoding import encode_query, has_chat_template, plain_text, render_generation_prompt

__all__ = ["Queries", "command_line_prompts", "read_prompt_file", "render_queries"]


@dataclass(frozen=True)
class Queries:
    """P prompts ready to sample from: texts[p] is what scorers, rankings and logs carry as the prompt, ids[p] what
    the policy is prompted with, where[p] where the prompt came from (for errors)."""

    texts: list[str]
    ids: list[list[int]]
    where: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def read_prompt_file(path: str | None) -> tuple[list[Prompt], list[str]]:
    """(prompts, `file:line` of each) of a JSONL file of {"prompt"} or {"messages"} lines; none for no file. Call it
    before a model loads, so that a bad line is reported at once."""
    if not path:
        return [], []
    return read_prompts(path), record_locations(path)


def command_line_prompts(tokenizer, texts: Sequence[str]) -> tuple[list[Prompt], list[str]]:
    """`--prompt TEXT` arguments as prompts: a user turn when the tokenizer has a chat template, else the text."""
    prompts = []
    for text in texts:
        if has_chat_template(tokenizer):
            messages = ({"role": "user", "content": text},)
            prompts.append(Prompt(plain_text(messages, add_generation_prompt=True), messages))
        else:
            prompts.append(Prompt(text))
    return prompts, [f"--prompt {i + 1}" for i in range(len(texts))]


def render_queries(tokenizer, prompts: Sequence[Prompt], where: Sequence[str] | None = None) -> Queries:
    """The prompts rendered as every stage renders them (`encode_query`; the text of a conversation is
    `render_generation_prompt`'s)."""
    return Queries(
        [p.prompt if p.messages is None else render_generation_prompt(tokenizer, p.messages) for p in prompts],
        [encode_query(tokenizer, p.prompt, p.messages) for p in prompts],
        list(where) if where is not None else [f"prompt {i}" for i in range(len(prompts))],
    )
