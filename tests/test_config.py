"""Typed config: defaults <- YAML <- dotted overrides; unknown keys and bad values name the field."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

import prefer
from prefer.config import ObjectiveConfig, PretrainConfig, load_config, save_config
from prefer.errors import PreferError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  tokens: 500\noptimizer:\n  lr: 0.01\nobjective:\n  name: ul\n")
    config = load_config(PretrainConfig, yaml_path=path, overrides=["optimizer.lr=0.02"])
    assert config.optimizer.lr == 0.02 and config.train.tokens == 500 and config.objective.name == "ul"


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lx=1", "train.lx"),
        ("objective.name=dpo", "objective.name"),
        ("train.tokens=lots", "train.tokens"),
        ("model.size=huge", "model.size"),
        ("train.micro_batch_size=3", "train.micro_batch_size"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(PreferError, match=field.replace(".", r"\.")):
        load_config(PretrainConfig, overrides=[override])


def test_missing_yaml_and_malformed_override(tmp_path):
    with pytest.raises(PreferError, match="does not exist"):
        load_config(PretrainConfig, yaml_path=tmp_path / "nope.yaml")
    with pytest.raises(PreferError, match="key=value"):
        load_config(PretrainConfig, overrides=["optimizer.lr"])


def test_task_defaults_resolve_and_zero_stays_zero():
    resolved = ObjectiveConfig(name="ul").resolved("pep8")
    assert resolved.threshold == 0.0 and resolved.ul_alpha == 0.01  # the paper's PEP8 values
    explicit = ObjectiveConfig(name="ul", threshold=0.0, ul_alpha=0.5).resolved("pii")
    assert explicit.threshold == 0.0 and explicit.ul_alpha == 0.5


def test_saved_config_round_trips(tmp_path):
    config = load_config(PretrainConfig, overrides=["train.snapshots=[0.5,1.0]", "objective.name=conditional"])
    save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["objective"]["name"] == "conditional"
    assert load_config(PretrainConfig, yaml_path=tmp_path / "config.yaml") == config


# ------------------------------------------------------------------ every key a message names exists


def _key_paths(cls, prefix=""):
    """Every dotted key of a config class, sections included (`ppo.kl.coef`, `ppo.kl`, `ppo`)."""
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = None
        yield prefix + item.name
        if dataclasses.is_dataclass(default):
            yield from _key_paths(type(default), f"{prefix}{item.name}.")


def _names_a_key(key: str) -> bool:
    """A key of some command, whole or as the tail of one (a section's check names `train.tokens`, not the path
    of every config that holds the section)."""
    from prefer.config import STAGE_CONFIGS

    paths = {path for cls in STAGE_CONFIGS.values() for path in _key_paths(cls)}
    return any(path == key or path.endswith("." + key) for path in paths)


def _literal_head(node) -> str | None:
    """A string argument's text, or an f-string's text up to its first placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return node.values[0].value
    return None


def _messages():
    """(where, field argument, message argument) of every `check(condition, FIELD, MESSAGE)` and (where, head, None)
    of every `PreferError("config: KEY: ...")` in prefer/."""
    root = Path(prefer.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            if name == "check" and len(node.args) >= 3:
                yield where, _literal_head(node.args[1]), node.args[2]
            elif name == "PreferError" and (named := _CONFIG_ERROR.match(_literal_head(node.args[0]) or "")):
                yield where, named.group(1) or named.group(2), None


# "config: KEY: ..." or "config: DOTTED.KEY ..." (not "config: unknown stage ...")
_CONFIG_ERROR = re.compile(r"^config: (?:([a-z_]\w*(?:\.[a-z_]\w*)+)\b|([a-z_]\w*):)")


def test_every_key_a_config_message_names_exists():
    """`check(..., "KEY", ...)` and "config: KEY: ..." errors name keys that exist (an f-string's literal part up to
    its placeholder: `objective.{name}` -> the section `objective`), and so does every dotted key in a check's
    message ("must divide train.batch_size"): a renamed key must not leave a message pointing at nothing."""
    dotted = re.compile(r"(?<![\w./-])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?![\w/(-])")
    stale = []
    for where, key, message in _messages():
        key = (key or "").rstrip(".")
        if key and not _names_a_key(key):
            stale.append(f"{where}: {key}")
        texts = [_literal_head(part) for part in ast.walk(message)] if message is not None else []
        for token in (t for text in texts if text for t in dotted.findall(text)):
            if token not in ("e.g", "i.e") and not _names_a_key(token):
                stale.append(f"{where}: {token} (in the message)")
    assert not stale, stale


def test_the_keys_prefer_rlhf_refuses_and_the_keys_it_names_instead_exist():
    from prefer.config import RLHFConfig
    from prefer.config.rlhf import AUTO_PATHS, SET_BY_THE_COMMAND

    paths = set(_key_paths(RLHFConfig))
    assert not [key for key in [*SET_BY_THE_COMMAND, *AUTO_PATHS] if key not in paths]
    named = [instead.split()[0] for instead in SET_BY_THE_COMMAND.values() if not instead.startswith("the ")]
    assert not [key for key in named if key not in paths], named


def test_the_commands_that_train_nothing_have_the_runtime_keys_they_read_under_the_training_names():
    """One spelling: `runtime.seed` / `runtime.device` / `runtime.progress` in every command, with the training
    stages' defaults; the old top-level keys are gone, and a training-only runtime key is an unknown key."""
    from prefer.config import (
        EvaluateConfig,
        InferenceRuntimeConfig,
        LabelConfig,
        RedteamConfig,
        RLHFConfig,
        RuntimeConfig,
    )

    for name in ("seed", "device", "progress"):
        assert getattr(InferenceRuntimeConfig(), name) == getattr(RuntimeConfig(), name)
    required = {
        LabelConfig: ["model=m", "prompts=p"],
        EvaluateConfig: ["checkpoint=c"],
        RedteamConfig: ["target=t", "redteam_model=r"],
        RLHFConfig: [],
    }
    for cls, values in required.items():
        assert load_config(cls, overrides=[*values, "runtime.device=cpu"]).runtime.device == "cpu"
        fields = {item.name for item in dataclasses.fields(cls)}
        assert not fields & {"seed", "device", "progress"}, cls
        with pytest.raises(PreferError, match=r"runtime\.precision"):
            load_config(cls, overrides=[*values, "runtime.precision=bf16"])
    assert load_config(LabelConfig, overrides=["model=m", "prompts=p", "runtime.seed=3"]).runtime.seed == 3
    with pytest.raises(PreferError, match=r"runtime\.seed: prefer evaluate draws its samples with sampling\.seed"):
        load_config(EvaluateConfig, overrides=["checkpoint=c", "runtime.seed=3"])
