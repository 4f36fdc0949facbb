"""Unpaired binary feedback, one JSON object per line (TRL's unpaired preference format), for KTO:

    {"prompt": str, "completion": str, "label": true | false}
    {"prompt": [messages], "completion": [messages], "label": ...}   conversational: the completion is the
                                                                      assistant's turn after the prompt's messages

`label` is a JSON boolean: true = desirable (thumbs up), false = undesirable. Records come from a JSONL file, a saved
data set directory or hf:NAME[:SPLIT], as every reader of prefer.data.formats; a bad line raises
`PreferError("<file>:<line>: ...")`, and so does a preference pair or ranking (those are `data.rankings`' data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefer.data.formats import parse_messages, read_records, write_jsonl
from prefer.errors import PreferError

__all__ = ["FEEDBACK_FORMAT", "Feedback", "read_feedback", "write_feedback"]

FEEDBACK_FORMAT = (
    'binary feedback is {"prompt", "completion", "label"}: strings (or lists of chat messages) and a JSON boolean'
)
_PAIRED_KEYS = ("chosen", "rejected", "responses", "ranking")


@dataclass(frozen=True)
class Feedback:
    """One completion of one prompt, judged good (label True) or bad. A conversational example keeps its messages
    (prompt and completion then hold their plain renderings, for logs; the encoders render the messages)."""

    prompt: str
    completion: str
    label: bool
    prompt_messages: tuple[dict[str, str], ...] | None = None
    completion_messages: tuple[dict[str, str], ...] | None = None


def _conversational(where: str, record: dict) -> Feedback:
    from prefer.encoding import plain_text

    if not isinstance(record["completion"], list):
        raise PreferError(
            f"{where}: field 'completion' must be a list of messages when 'prompt' is ({FEEDBACK_FORMAT})"
        )
    prompt = parse_messages(where, record["prompt"], field="prompt", need_assistant=False)
    completion = parse_messages(where, record["completion"], field="completion")
    if completion[0]["role"] != "assistant" or not completion[0]["content"].strip():
        raise PreferError(f"{where}: field 'completion' must start with the assistant's turn after the prompt")
    return Feedback(
        plain_text(prompt, add_generation_prompt=True),
        plain_text(completion),
        record["label"],
        prompt_messages=prompt,
        completion_messages=completion,
    )


def _feedback(where: str, record: dict) -> Feedback:
    paired = [key for key in _PAIRED_KEYS if key in record]
    if paired and "label" not in record:
        raise PreferError(
            f"{where}: key '{paired[0]}' is a preference pair or ranking (data.rankings, dpo.loss=dpo|ipo|listwise); "
            f"dpo.loss=kto reads unpaired feedback ({FEEDBACK_FORMAT})"
        )
    if not isinstance(record.get("label"), bool):
        raise PreferError(f"{where}: field 'label' must be a JSON boolean, true or false ({FEEDBACK_FORMAT})")
    if isinstance(record.get("prompt"), list):
        return _conversational(where, record)
    for field in ("prompt", "completion"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise PreferError(f"{where}: field '{field}' must be a non-empty string ({FEEDBACK_FORMAT})")
    return Feedback(record["prompt"], record["completion"], record["label"])


def read_feedback(path: str | Path) -> list[Feedback]:
    """Every example of a binary-feedback file, checked line by line."""
    return [_feedback(where, record) for where, record in read_records(path, {})]


def write_feedback(path: str | Path, examples: Sequence[Feedback]) -> None:
    """Binary feedback JSONL, atomically (conversational examples as their messages)."""
    write_jsonl(
        path,
        [
            {"prompt": e.prompt, "completion": e.completion, "label": e.label}
            if e.prompt_messages is None
            else {"prompt": list(e.prompt_messages), "completion": list(e.completion_messages), "label": e.label}
            for e in examples
        ],
    )
