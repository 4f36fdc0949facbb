"""The Python API: every stage as a function of its config object, returning a typed, frozen result.

    from prefer import api

    sft_config = api.config("sft", {"model": {"init_from": "smollm2-135m-instruct"},
                                    "data": {"demonstrations": "demos.jsonl"}}, overrides=["train.epochs=1"])
    sft = api.sft(sft_config)                      # StageResult(run_dir, final, metrics)
    grpo_config = api.config("grpo", {"model": {"init_from": sft.final}, "prompts": "prompts.jsonl",
                                      "reward": {"scorer": "my-score"}})
    grpo = api.grpo(grpo_config, scorer=my_score)  # my_score(texts) -> list[float], lower is better
    evaluation = api.evaluate(api.config("evaluate", {"checkpoint": grpo.final, "task": "pii"}))

A config built here is validated exactly as `prefer STAGE --config FILE KEY=VALUE` validates one (the same
loader, `prefer.config.load_config`, and the same tables of commands, `STAGE_CONFIGS` and `COMMAND_DEFAULTS`):
unknown keys, ill-typed values and out-of-range settings are one PreferError line naming the key. The functions are
thin: each calls the stage the command of the same name calls (`STAGES`) and reads back what it wrote. A scorer
given as a Python callable is used instead of the config's scorer name, and its results are checked like a `py:`
scorer's (`as_scorer`). docs/python-api.md has a worked example, run by tests/test_python_api.py.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefer.config import (
    COMMAND_DEFAULTS,
    STAGE_CONFIGS,
    DPOConfig,
    EvaluateConfig,
    ExperimentConfig,
    LabelConfig,
    PolicyGradientConfig,
    PretrainConfig,
    RedteamConfig,
    RewardConfig,
    RLHFConfig,
    SFTConfig,
    load_config,
)
from prefer.errors import PreferError

if TYPE_CHECKING:  # the labeler's own result; importing it imports torch, which building a config does not need
    from prefer.labeling.synthetic import LabelReport

__all__ = [
    "STAGES",
    "EvaluationResult",
    "PipelineResult",
    "RedteamResult",
    "StageResult",
    "as_scorer",
    "config",
    "dpo",
    "evaluate",
    "experiment",
    "grpo",
    "label",
    "policy_gradient",
    "ppo",
    "pretrain",
    "redteam",
    "reward",
    "rlhf",
    "sft",
]

# Every function below, by the `prefer` command it stands for: command -> (module, function) that runs it. The
# config class of each is prefer.config.STAGE_CONFIGS[command], the table `prefer config` and `--help` read.
STAGES: dict[str, tuple[str, str]] = {
    "pretrain": ("prefer.stages.pretrain", "pretrain"),
    "sft": ("prefer.stages.sft", "sft"),
    "reward": ("prefer.stages.reward", "reward"),
    "ppo": ("prefer.stages.policy_gradient", "policy_gradient"),
    "grpo": ("prefer.stages.policy_gradient", "policy_gradient"),
    "dpo": ("prefer.stages.dpo", "dpo"),
    "label": ("prefer.labeling.synthetic", "label_synthetic"),
    "evaluate": ("prefer.stages.evaluate", "evaluate"),
    "redteam": ("prefer.stages.redteam", "redteam"),
    "experiment": ("prefer.experiments.pretraining", "experiment"),
    "rlhf": ("prefer.experiments.rlhf", "rlhf"),
}


def _stage(command: str) -> Callable:
    module, function = STAGES[command]
    return getattr(importlib.import_module(module), function)


# ------------------------------------------------------------------ configs


def config(
    stage: str | Any,
    values: Mapping[str, Any] | None = None,
    *,
    yaml: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Any:
    """The config object of `stage` (a command name: `"sft"`, `"grpo"`, ...; `prefer config STAGE` lists its keys),
    built and validated by the command line's loader (`prefer.config.load_config`).

    `values`: a mapping, nested (`{"train": {"epochs": 1}}`) or dotted (`{"train.epochs": 1}`), over the command's
    defaults (`"grpo"`: `algorithm=grpo` and GRPO's defaults); `yaml`: a config file as `--config` takes it, instead
    of `values`; `overrides`: `KEY=VALUE` strings as on the command line, applied last. `stage` may also be a config
    object: the result is a copy with `values` and `overrides` applied, validated again (e.g.
    `config(sft_config, overrides=["train.epochs=2"])`)."""
    if isinstance(stage, str):
        if stage not in STAGE_CONFIGS:
            raise PreferError(f"config: unknown stage {stage!r}; choose one of {', '.join(STAGE_CONFIGS)}")
        cls, base = STAGE_CONFIGS[stage], dict(COMMAND_DEFAULTS.get(stage, {}))
    elif dataclasses.is_dataclass(stage) and not isinstance(stage, type):
        cls, base = type(stage), _dotted(dataclasses.asdict(stage))
    else:
        raise PreferError(f"config: expected a stage name or a config object, not {type(stage).__name__}")
    if values is not None and yaml is not None:
        raise PreferError("config: give values or a YAML file, not both (put the values in overrides)")
    # the values go where a command's own defaults go: under the YAML file and the overrides
    defaults = {**base, **_dotted(values or {})}
    return load_config(cls, yaml_path=yaml, overrides=list(overrides), defaults=defaults)


def _dotted(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (`{"a": {"b": 1}}` -> `{"a.b": 1}`), so that nested and dotted values and
    overrides merge key by key."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat |= _dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ------------------------------------------------------------------ scorers from Python


class _CheckedScorer:
    """A Python scorer whose every result is checked: n finite numbers (else one PreferError line naming it);
    higher_is_better: `fn` returns rewards and this returns misalignment (their negatives)."""

    def __init__(self, fn: Callable, *, name: str, higher_is_better: bool):
        self.fn, self.name, self.higher_is_better = fn, name, higher_is_better

    def _call(self, fn: Callable, args: tuple, n: int, what: str) -> list[float]:
        from prefer.scorers.user import call_checked  # the checks of `py:` scorers, with their messages

        return call_checked(self.name, fn, args, n, what, higher_is_better=self.higher_is_better)

    def __call__(self, texts: Sequence[str]) -> list[float]:
        texts = list(texts)
        return self._call(self.fn, (texts,), len(texts), "text")

    def __repr__(self) -> str:
        return f"as_scorer({self.name})"


class _CheckedPairScorer(_CheckedScorer):
    """The same, for a scorer that also reads (prompt, response) pairs (`score_pairs`)."""

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        prompts, responses = list(prompts), list(responses)
        return self._call(self.fn.score_pairs, (prompts, responses), len(prompts), "pair")


def as_scorer(fn: Callable, *, higher_is_better: bool | None = None, name: str | None = None) -> Callable:
    """A Python callable `fn(texts) -> list[float]` as a stage's scorer: misalignment, lower is better, or with
    `higher_is_better=True` a reward (what the stage gets is its negative). A result that is not one finite
    number per text, or an exception, stops the stage with one PreferError line naming `name` (default: the
    function's name). `fn.score_pairs(prompts, responses)`, where it exists, is used for prompt-response pairs;
    `higher_is_better=None` reads `fn.higher_is_better` (default False), as `py:` scorers do. The stage functions
    below wrap every callable they get this way."""
    if isinstance(fn, _CheckedScorer):
        return fn
    if not callable(fn):
        raise PreferError(f"scorer: {type(fn).__name__} object is not callable")
    if higher_is_better is None:
        higher_is_better = bool(getattr(fn, "higher_is_better", False))
    name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
    kind = _CheckedPairScorer if callable(getattr(fn, "score_pairs", None)) else _CheckedScorer
    return kind(fn, name=name, higher_is_better=higher_is_better)


def _scorer(fn: Callable | None) -> Callable | None:
    return None if fn is None else as_scorer(fn)


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class StageResult:
    """What a training stage wrote: its run directory, the final model in it (a plain Hugging Face directory),
    and the last record of its `metrics.jsonl` (`{"step": N, "<name>": value, ...}`; `{}` when none was logged).
    `history()` reads every record."""

    run_dir: Path
    final: Path
    metrics: dict[str, Any]

    @classmethod
    def of(cls, run_dir: str | Path, final: str | Path) -> StageResult:
        from prefer.training import read_metrics

        records = read_metrics(Path(run_dir))
        return cls(Path(run_dir), Path(final), records[-1] if records else {})

    def history(self) -> list[dict[str, Any]]:
        """Every record of the run's metrics.jsonl, in step order."""
        from prefer.training import read_metrics

        return read_metrics(self.run_dir)


@dataclass(frozen=True)
class EvaluationResult:
    """`prefer evaluate`'s results: the JSON file it wrote (`out`), each scorer's aggregate scores (`"mean"`,
    `"mean_ci"`, `"fraction_above_threshold"`, ..., `"per_sample"`), the samples (prompt-major with prompts:
    `samples_per_prompt` answers to each of `prompts`) and the whole results mapping."""

    out: Path
    scores: dict[str, dict[str, Any]]
    samples: list[str]
    prompts: list[str] | None
    samples_per_prompt: int | None
    results: dict[str, Any]


@dataclass(frozen=True)
class RedteamResult:
    """`prefer redteam`'s results: its output directory (redteam.json, redteam.png, the prompt pools), the
    summary across trials and the whole results mapping."""

    out_dir: Path
    summary: dict[str, Any]
    results: dict[str, Any]


@dataclass(frozen=True)
class PipelineResult:
    """A whole experiment's results (`prefer experiment`, `prefer rlhf`): its output directory, the Markdown
    tables it printed and wrote (results.md) and the results mapping (results.json)."""

    out_dir: Path
    table: str
    results: dict[str, Any]

    @classmethod
    def of(cls, out_dir: Path, results: dict[str, Any]) -> PipelineResult:
        return cls(out_dir, (out_dir / "results.md").read_text(encoding="utf-8"), results)


# ------------------------------------------------------------------ the stages


def pretrain(config: PretrainConfig, *, resume: bool = False) -> StageResult:
    """`prefer pretrain`: a `PretrainConfig` (`config("pretrain", ...)`); `resume` continues the run in `out_dir`
    from its last checkpoint."""
    return StageResult.of(config.out_dir, _stage("pretrain")(config, resume=resume))


def sft(config: SFTConfig, *, resume: bool = False) -> StageResult:
    """`prefer sft`: supervised finetuning on demonstrations (an `SFTConfig`)."""
    return StageResult.of(config.out_dir, _stage("sft")(config, resume=resume))


def reward(config: RewardConfig, *, resume: bool = False) -> StageResult:
    """`prefer reward`: a reward model on rankings (a `RewardConfig`); its metrics end with the held-out
    evaluation."""
    return StageResult.of(config.out_dir, _stage("reward")(config, resume=resume))


def dpo(config: DPOConfig, *, resume: bool = False) -> StageResult:
    """`prefer dpo`: DPO, IPO or listwise DPO on rankings (a `DPOConfig`)."""
    return StageResult.of(config.out_dir, _stage("dpo")(config, resume=resume))


def policy_gradient(
    config: PolicyGradientConfig,
    *,
    resume: bool = False,
    scorer: Callable | None = None,
    gold_scorer: Callable | None = None,
) -> StageResult:
    """`prefer ppo` / `prefer grpo`: PPO, RLOO or GRPO, as `config.algorithm` says (`config("ppo", ...)` is PPO
    unless `algorithm` is set; `config("grpo", ...)` is GRPO with its defaults). `scorer`: a Python callable used
    as the proxy reward instead of `reward.scorer` (which then only names it in the run's records); `gold_scorer`:
    one logged as `reward/gold`, never trained on. Both are misalignment (lower is better) unless made with
    `as_scorer(fn, higher_is_better=True)`."""
    final = _stage("grpo")(config, resume=resume, scorer=_scorer(scorer), gold_scorer=_scorer(gold_scorer))
    return StageResult.of(config.out_dir, final)


ppo = policy_gradient  # the command `prefer ppo`
grpo = policy_gradient  # the command `prefer grpo`


def label(config: LabelConfig, *, scorer: Callable | None = None, progress: bool = True) -> LabelReport:
    """`prefer label --synthetic`: K samples per prompt ranked by a gold scorer (a `LabelConfig`; `scorer`, a
    Python callable, instead of `config.scorer`). Returns the labeler's own `LabelReport` (the files it wrote and
    what it dropped)."""
    return _stage("label")(config, scorer=_scorer(scorer), progress=progress)


def evaluate(config: EvaluateConfig) -> EvaluationResult:
    """`prefer evaluate`: samples of a checkpoint scored by its task's scorers (an `EvaluateConfig`)."""
    results = _stage("evaluate")(config)
    return EvaluationResult(
        out=Path(results["out"]),
        scores=results["scores"],
        samples=results["samples"],
        prompts=results.get("prompts"),
        samples_per_prompt=results.get("samples_per_prompt"),
        results=results,
    )


def redteam(config: RedteamConfig) -> RedteamResult:
    """`prefer redteam`: the red-team search against a model (a `RedteamConfig`)."""
    results = _stage("redteam")(config)
    return RedteamResult(Path(config.out_dir), results["summary"], results)


def experiment(config: ExperimentConfig) -> PipelineResult:
    """`prefer experiment`: one pretraining run per objective on the same tokens, evaluated and tabled (an
    `ExperimentConfig`); the results are in `<out_dir>/<task>/`."""
    results = _stage("experiment")(config)
    return PipelineResult.of(Path(config.out_dir) / results["task"], results)


def rlhf(config: RLHFConfig) -> PipelineResult:
    """`prefer rlhf`: the whole InstructGPT pipeline with synthetic labels, evaluated and tabled (an
    `RLHFConfig`)."""
    return PipelineResult.of(Path(config.out_dir), _stage("rlhf")(config))
