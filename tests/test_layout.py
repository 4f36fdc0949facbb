"""The floor plan holds: one objective table that the config agrees with, every config key discoverable."""

import subprocess
import sys

import pytest
import yaml

from prefer.config import (
    COMMAND_DEFAULTS,
    OBJECTIVES,
    STAGE_CONFIGS,
    build_config,
    default_yaml,
    describe,
    load_config,
)
from prefer.pretraining_objectives import OBJECTIVES as OBJECTIVE_TABLE


def test_the_objective_table_names_exactly_the_configurable_objectives():
    assert tuple(OBJECTIVE_TABLE) == OBJECTIVES
    assert [name for name, spec in OBJECTIVE_TABLE.items() if spec.value_head] == ["awr"]
    assert [name for name, spec in OBJECTIVE_TABLE.items() if spec.control_tokens] == ["conditional"]


def test_model_sizes_in_config_match_the_model_builder():
    from prefer.config import MODEL_SIZES
    from prefer.models.build import MODEL_SIZES as SHAPES

    assert tuple(SHAPES) == MODEL_SIZES


def _leaves(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


REQUIRED = {
    "sft": {"data.demonstrations": "d.jsonl", "model.init_from": "m"},
    "reward": {"data.rankings": "r.jsonl", "model.init_from": "m"},
    "ppo": {"model.init_from": "m", "prompts": "p.jsonl", "reward.scorer": "pii"},
    "dpo": {"data.rankings": "r.jsonl", "model.init_from": "m"},
    "grpo": {"model.init_from": "m", "prompts": "p.jsonl", "reward.scorer": "pii"},
    "label": {"model": "m", "prompts": "p.jsonl"},
    "evaluate": {"checkpoint": "c"},
    "redteam": {"target": "t", "redteam_model": "m"},
}


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_help_lists_every_key_and_the_default_yaml_loads_back(stage, tmp_path):
    cls, defaults = STAGE_CONFIGS[stage], COMMAND_DEFAULTS.get(stage, {})  # `prefer grpo`: algorithm=grpo
    config = build_config(cls, {**defaults, **REQUIRED.get(stage, {})})
    keys = set(_leaves(yaml.safe_load(yaml.safe_dump(__import__("dataclasses").asdict(config)))))
    listed = describe(cls, defaults)
    assert all(f"  {key}=" in listed for key in keys), sorted(k for k in keys if f"  {k}=" not in listed)
    path = tmp_path / "defaults.yaml"
    path.write_text(default_yaml(cls, defaults))
    overrides = [f"{key}={value}" for key, value in REQUIRED.get(stage, {}).items()]
    assert load_config(cls, yaml_path=path, overrides=overrides) == config  # the printed YAML is the defaults


def test_cli_help_and_config_commands_show_the_keys():
    help_text = subprocess.run(
        [sys.executable, "-m", "prefer", "sft", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "train.epochs=4.0" in help_text and "data.packing=false" in help_text and "optimizer.lr=0.0001" in help_text
    printed = subprocess.run(
        [sys.executable, "-m", "prefer", "config", "ppo"], capture_output=True, text=True, check=True
    ).stdout
    assert yaml.safe_load(printed)["kl"] == {"coef": 0.02, "target": None, "horizon": 10_000}


def test_building_a_config_imports_no_torch():
    code = (
        "import sys; from prefer.config import PolicyGradientConfig, load_config; "
        "load_config(PolicyGradientConfig, overrides=['model.init_from=m', 'prompts=p', 'reward.scorer=pii']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_a_report_of_a_training_run_loads_no_torch(tmp_path):
    """`prefer report` reads metrics.jsonl through prefer.run_dir (the torch-free floor): before the layers were
    ordered it imported prefer.training, and so torch, to read a JSONL file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n')
    code = (
        "import sys; from prefer.report import report; "
        f"page = report([{str(run)!r}], out={str(tmp_path / 'report.html')!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')), page.stat().st_size > 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[] True\n"
