"""Typed, validated configuration: one frozen dataclass per stage, checked at construction, with the same nested
shape everywhere (`optimizer`, `schedule`, `runtime`, `sampling`, `kl`, `ptx`, `endpoint` are shared sub-configs).

Values come from the dataclass defaults, then a YAML file, then dotted command-line overrides
(`optimizer.lr=3e-4 objective.name=conditional`), merged by OmegaConf, which rejects unknown keys and ill-typed
values. The full resolved config is saved with every run (`config.yaml`). `prefer STAGE --help` lists every key with
its default and comment (`describe`); `prefer config STAGE` prints the default YAML (`default_yaml`).

This package is a leaf: it imports no torch and no transformers, so building a config is instant.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefer.config.chat import ChatConfig
from prefer.config.common import (
    ENDPOINT_APIS,
    PARALLEL,
    PRECISIONS,
    EndpointConfig,
    GenerationConfig,
    InferenceRuntimeConfig,
    KLConfig,
    LoRAConfig,
    OptimizerConfig,
    PTXConfig,
    RuntimeConfig,
    SamplingConfig,
    ScheduleConfig,
    check_finite,
)
from prefer.config.instructgpt import (
    ALGORITHM_DEFAULTS,
    DPO_LOSS_NAMES,
    GROUP_ALGORITHMS,
    LABEL_BLOCKS,
    MAX_RESPONSES,
    MIN_RESPONSES,
    POLICY_GRADIENT_ALGORITHMS,
    DPOConfig,
    DPODataConfig,
    DPOEvalConfig,
    DPOLossConfig,
    DPOModelConfig,
    EpochTrainConfig,
    FinetuneModelConfig,
    GroupLossConfig,
    LabelConfig,
    PolicyGradientConfig,
    PolicyGradientTrainConfig,
    PolicyModelConfig,
    PPOLossConfig,
    RewardConfig,
    RewardDataConfig,
    RewardSourceConfig,
    RolloutConfig,
    SFTConfig,
    SFTDataConfig,
)
from prefer.config.pretraining import (
    MODEL_SIZES,
    OBJECTIVES,
    SCORE_ON,
    SCORE_SCALES,
    ContinuationsConfig,
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    ExperimentRedteamConfig,
    ModelConfig,
    ObjectiveConfig,
    PretrainConfig,
    PretrainTrainConfig,
    RedteamConfig,
    RedteamSearchConfig,
)
from prefer.config.rlhf import RLHFConfig, RLHFEvalConfig
from prefer.errors import PreferError
from prefer.files import write_text_atomic

__all__ = [
    "ALGORITHM_DEFAULTS",
    "DPO_LOSS_NAMES",
    "GROUP_ALGORITHMS",
    "DPOConfig",
    "DPODataConfig",
    "DPOEvalConfig",
    "DPOLossConfig",
    "DPOModelConfig",
    "GroupLossConfig",
    "ENDPOINT_APIS",
    "LABEL_BLOCKS",
    "MAX_RESPONSES",
    "MIN_RESPONSES",
    "MODEL_SIZES",
    "OBJECTIVES",
    "PARALLEL",
    "PRECISIONS",
    "SCORE_ON",
    "SCORE_SCALES",
    "COMMAND_DEFAULTS",
    "STAGE_CONFIGS",
    "ContinuationsConfig",
    "DataConfig",
    "EndpointConfig",
    "EpochTrainConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "ExperimentRedteamConfig",
    "FinetuneModelConfig",
    "GenerationConfig",
    "InferenceRuntimeConfig",
    "KLConfig",
    "LabelConfig",
    "LoRAConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimizerConfig",
    "POLICY_GRADIENT_ALGORITHMS",
    "PPOLossConfig",
    "PolicyGradientConfig",
    "PolicyGradientTrainConfig",
    "PolicyModelConfig",
    "PTXConfig",
    "PretrainConfig",
    "PretrainTrainConfig",
    "RedteamConfig",
    "RedteamSearchConfig",
    "RewardConfig",
    "RLHFConfig",
    "RLHFEvalConfig",
    "RewardDataConfig",
    "RewardSourceConfig",
    "RolloutConfig",
    "RuntimeConfig",
    "SFTConfig",
    "SFTDataConfig",
    "SamplingConfig",
    "ScheduleConfig",
    "build_config",
    "config_to_dict",
    "default_yaml",
    "describe",
    "load_config",
    "save_config",
]

# The config class of every subcommand that takes one (`prefer config NAME`, `prefer NAME --help`).
STAGE_CONFIGS: dict[str, type] = {
    "experiment": ExperimentConfig,
    "pretrain": PretrainConfig,
    "corpus": PretrainConfig,
    "evaluate": EvaluateConfig,
    "redteam": RedteamConfig,
    "label": LabelConfig,
    "sft": SFTConfig,
    "reward": RewardConfig,
    "ppo": PolicyGradientConfig,
    "rlhf": RLHFConfig,
    "dpo": DPOConfig,
    "chat": ChatConfig,  # prefer demo --pipeline chat
    "grpo": PolicyGradientConfig,  # an alias: `prefer ppo algorithm=grpo`, with GRPO's defaults (COMMAND_DEFAULTS)
}
# Defaults a command lays under the YAML file and the overrides (dotted keys): what makes `prefer grpo` an alias.
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {"grpo": {"algorithm": "grpo"}}

ConfigT = TypeVar("ConfigT")


def load_config(
    cls: type[ConfigT],
    *,
    yaml_path: str | Path | None = None,
    overrides: list[str] | tuple = (),
    defaults: dict[str, Any] | None = None,
) -> ConfigT:
    """Defaults <- `defaults` (dotted keys a command lays under the user's values, COMMAND_DEFAULTS) <- YAML file <-
    dotted overrides, validated by type (OmegaConf) and by each __post_init__. A class with `defaults_for(values)`
    (PolicyGradientConfig: its algorithm's ALGORITHM_DEFAULTS) gets those under `defaults`, for the values chosen."""
    section = None  # the YAML file's top-level key being merged, for errors OmegaConf reports without a key
    try:
        loaded = _read_yaml(Path(yaml_path)) if yaml_path is not None else {}
        bad = [item for item in overrides if "=" not in item]
        if bad:
            raise PreferError(f"config override {bad[0]!r}: expected key=value, e.g. optimizer.lr=3e-4")

        def merged_onto(base):
            nonlocal section
            for section in loaded:
                base = OmegaConf.merge(base, OmegaConf.masked_copy(loaded, [section]))
            section = None
            return OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))

        merged = merged_onto(_defaults(cls, defaults or {}))
        if hasattr(cls, "defaults_for"):  # defaults that depend on the values chosen: merge again onto them
            merged = merged_onto(_defaults(cls, {**cls.defaults_for(merged), **(defaults or {})}))
        check_finite(OmegaConf.to_container(merged, throw_on_missing=False))  # before __post_init__'s range checks
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or (str(section) if section is not None else None)
        message = str(error).splitlines()[0]
        source = f" (in {yaml_path})" if yaml_path else ""
        raise PreferError(f"config: {key + ': ' if key else ''}{message}{source}") from None


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested mappings; paths become strings."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    return nested


def _defaults(cls: type, defaults: dict[str, Any]) -> DictConfig:
    """The class's field defaults with `defaults` (dotted keys) over them."""
    return OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(_nested(defaults)))


def _all_defaults(cls: type, defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The dotted defaults over the fields' of a command: its own and those they choose (`defaults_for`)."""
    defaults = defaults or {}
    return {**(cls.defaults_for(defaults) if hasattr(cls, "defaults_for") else {}), **defaults}


def _read_yaml(path: Path):
    """A config file's mapping; every way a file can fail to be one is a PreferError naming it (and its line)."""
    if not path.exists():
        raise PreferError(f"{path}: config file does not exist")
    if not path.is_file():
        raise PreferError(f"{path}: config file is not a file")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PreferError(f"{path}{line}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise PreferError(f"{path}: not a text (UTF-8) file") from None
    except OSError as error:
        raise PreferError(f"{path}: cannot read ({error.strerror or error})") from None
    if not isinstance(loaded, DictConfig):
        raise PreferError(
            f"{path}: expected a mapping of config keys (e.g. `optimizer: {{lr: 3.0e-4}}`), "
            f"not a {type(loaded).__name__.removesuffix('Config').lower()}"
        )
    return loaded


def build_config(cls: type[ConfigT], values: dict[str, Any] | None = None) -> ConfigT:
    """A config from dotted keys, as on the command line: build_config(PolicyGradientConfig, {"algorithm": "grpo",
    "train.iterations": 3, ...}); paths become strings. Validated, and defaulted (`defaults_for`), like load_config."""
    try:
        chosen = OmegaConf.create(_nested(values or {}))
        merged = OmegaConf.merge(OmegaConf.structured(cls), chosen)
        if hasattr(cls, "defaults_for"):  # defaults that depend on the values chosen: merge again onto them
            merged = OmegaConf.merge(_defaults(cls, cls.defaults_for(merged)), chosen)
        check_finite(OmegaConf.to_container(merged, throw_on_missing=False))  # before __post_init__'s range checks
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise PreferError(f"config: {key + ': ' if key else ''}{str(error).splitlines()[0]}") from None


def config_to_dict(config: Any) -> dict:
    return asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


# ------------------------------------------------------------------ discoverable options

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")
_COMMENT_LINE = re.compile(r"^\s+#\s?(.*)$")


def _field_comments(cls: type) -> dict[str, str]:
    """The comment of each field in the class's source: the one at the end of its line, after any comment lines
    just above it."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        if (match := _COMMENT_LINE.match(line)) is not None:
            above.append(match.group(1).strip())
            continue
        match = _FIELD_LINE.match(line)
        if match is not None and not line.strip().startswith(("def ", "return", "check(")):
            text = " ".join([*above, match.group(2) or ""]).strip()
            if text:
                comments[match.group(1)] = text
        above = []
    return comments


def _field_default(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None


def _walk(cls: type, value: Any, prefix: str, over: dict[str, Any]):
    """(dotted key, default, comment, is_section) for every field, depth first; `value` is the class's default
    instance where known (nested defaults of a parent, e.g. SFT's optimizer lr), else None; `over`: dotted
    defaults over the fields' (a command's, _all_defaults)."""
    comments = _field_comments(cls)
    for item in dataclasses.fields(cls):
        default = getattr(value, item.name) if value is not None else _field_default(item)
        key = prefix + item.name
        if dataclasses.is_dataclass(default):
            yield key, None, comments.get(item.name, _summary(type(default))), True
            yield from _walk(type(default), default, key + ".", over)
        else:
            yield key, over.get(key, default), comments.get(item.name, ""), False


def _summary(cls: type) -> str:
    """The first line of a class's own docstring ('' for the signature dataclasses put there by default)."""
    doc = (cls.__doc__ or "").strip()
    return "" if doc.startswith(cls.__name__ + "(") else doc.splitlines()[0]


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def describe(cls: type, defaults: dict[str, Any] | None = None) -> str:
    """Every config key of a stage with its default and comment, for `--help`; `defaults`: the command's own
    (COMMAND_DEFAULTS)."""
    lines = []
    for key, default, comment, section in _walk(cls, None, "", _all_defaults(cls, defaults)):
        if section:
            lines.append(f"  {key}:" + (f"  ({comment})" if comment else ""))
            continue
        lines.append(f"  {key}={_scalar(default)}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def default_yaml(cls: type, defaults: dict[str, Any] | None = None) -> str:
    """The full default config of a stage as YAML with every comment, as `--config` accepts it; `defaults`: the
    command's own (COMMAND_DEFAULTS)."""
    lines = [f"# {cls.__name__}: {_summary(cls)}".rstrip(": ")]
    for key, default, comment, section in _walk(cls, None, "", _all_defaults(cls, defaults)):
        depth = key.count(".")
        name = key.rsplit(".", 1)[-1]
        note = f"  # {comment}" if comment else ""
        lines.append("  " * depth + (f"{name}:{note}" if section else f"{name}: {_scalar(default)}{note}"))
    return "\n".join(lines) + "\n"
