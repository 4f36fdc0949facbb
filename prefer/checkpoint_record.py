"""`prefer.json`, the record prefer writes into every model directory it saves, read and written here only.

It says what made the model (stage, task, scorer, init_from, losses, the stage's hyperparameters, its held-out
results, ...). A few keys are read back, and they are typed properties of the record: `stage`, `task`, `scorer`,
`control_tokens_trained` (a model pretrained with `<|good|>`/`<|bad|>`), `tokens` (pretraining tokens seen),
`iterations` (policy-gradient iterations), `reward_bias` (a reward model's) and `transformers` (a reward model's
plain-transformers export). The rest travels as written (`as_dict`, key order kept): caches key on it and results
tables copy it. A directory prefer did not write has an empty record. No torch: the report and the app may read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefer.errors import PreferError
from prefer.files import read_error, write_json_atomic

__all__ = ["FILE_NAME", "INHERITED", "CheckpointRecord", "exists", "path_of", "read", "write"]

FILE_NAME = "prefer.json"
INHERITED = ("task", "scorer", "control_tokens_trained")  # what a model finetuned from another keeps of its record

# The keys read back, and the JSON types they may hold (None: not recorded).
_TYPES: dict[str, tuple[type, ...]] = {
    "stage": (str,),
    "task": (str,),
    "scorer": (str,),
    "control_tokens_trained": (bool,),
    "tokens": (int,),
    "iterations": (int,),
    "reward_bias": (int, float),
    "transformers": (dict,),
}


@dataclass(frozen=True)
class CheckpointRecord:
    """One directory's prefer.json (empty for a model prefer did not write)."""

    data: Mapping[str, Any] = field(default_factory=dict)  # the whole record, as written

    @classmethod
    def of(cls, data: Mapping[str, Any], *, where: str = FILE_NAME) -> CheckpointRecord:
        """A record of `data`, its known keys type-checked (a PreferError names `where` and the key)."""
        if not isinstance(data, Mapping):
            raise PreferError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for key, types in _TYPES.items():
            value = data.get(key)
            if value is None:
                continue
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):  # True is an int
                raise PreferError(f"{where}: {key} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
        return cls(dict(data))

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        """Any key, as written (the stage-specific ones: loss, beta, val_accuracy, ...)."""
        return self.data.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def inherited(self) -> dict[str, Any]:
        """The part a model finetuned from this one carries on (`INHERITED`)."""
        return {key: value for key, value in self.data.items() if key in INHERITED}

    @property
    def stage(self) -> str | None:
        return self.data.get("stage")

    @property
    def task(self) -> str | None:
        return self.data.get("task")

    @property
    def scorer(self) -> str | None:
        return self.data.get("scorer")

    @property
    def control_tokens_trained(self) -> bool:
        return bool(self.data.get("control_tokens_trained"))

    @property
    def tokens(self) -> int | None:
        return self.data.get("tokens")

    @property
    def iterations(self) -> int | None:
        return self.data.get("iterations")

    @property
    def reward_bias(self) -> float | None:
        bias = self.data.get("reward_bias")
        return None if bias is None else float(bias)

    @property
    def transformers(self) -> dict | None:
        return self.data.get("transformers")

    @property
    def is_reward_model(self) -> bool:
        """Written by `prefer reward` (its stage, or a reward bias: the records of before the stage key)."""
        return self.stage == "reward" or "reward_bias" in self.data


def path_of(directory: str | Path) -> Path:
    return Path(directory) / FILE_NAME


def exists(directory: str | Path) -> bool:
    return path_of(directory).is_file()


def read(directory: str | Path) -> CheckpointRecord:
    """The record of a model directory; an empty one where there is no prefer.json. A file that is not a JSON
    object, or a known key of the wrong type, is a PreferError naming the file."""
    path = path_of(directory)
    if not path.exists():
        return CheckpointRecord()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise read_error(path, error) from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise PreferError(f"{path}: not JSON ({error})") from None
    return CheckpointRecord.of(data, where=str(path))


def write(directory: str | Path, record: CheckpointRecord | Mapping[str, Any]) -> None:
    """Write `record` as the directory's prefer.json, atomically (2-space JSON, a final newline)."""
    data = record.data if isinstance(record, CheckpointRecord) else record
    write_json_atomic(path_of(directory), dict(CheckpointRecord.of(data, where=str(path_of(directory))).data))
