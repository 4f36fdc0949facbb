"""Typed config: defaults <- YAML <- dotted overrides; unknown keys and bad values name the field."""

import pytest
import yaml

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
