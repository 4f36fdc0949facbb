"""The Python API (prefer.api): the notebook example of docs/python-api.md, run from the page itself (its code blocks,
in order) on a tiny model, returns typed results whose paths exist, whose metrics hold their keys and whose reward
moved the way GRPO pushed it; configs built in Python are refused as the command line refuses them; a Python scorer's
bad result is one line naming it."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
from tiny_runs import tiny_overrides

from prefer import api
from prefer.errors import PreferError

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def code_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def tiny_base(pii_corpus, tmp_path_factory):
    """A tiny GPT-2 pretrained (through the API) on the PII changelogs: the example's `base_model`."""
    root = tmp_path_factory.mktemp("api")
    overrides = tiny_overrides(root / "base", pii_corpus, root / "cache", **{"model.context": 128})
    return api.pretrain(api.config("pretrain", overrides=[*overrides, "runtime.trackers=[]"]))


@pytest.mark.stage
@pytest.mark.usefixtures("one_thread")
def test_the_documented_notebook_runs_as_written_and_returns_typed_results(tiny_base, tmp_path):
    blocks = code_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 5, (
        "docs/python-api.md: the example is five ```python blocks (settings, data, SFT, GRPO, eval)"
    )
    namespace: dict = {}
    exec(compile(blocks[0], f"{DOC} (code block 1)", "exec"), namespace)
    assert namespace["base_model"] == "smollm2-135m-instruct"  # what the page tells a reader to run
    namespace.update(base_model=str(tiny_base.final), runs=tmp_path / "notebook")  # the tiny model, a temporary folder
    for number, block in enumerate(blocks[1:], start=2):
        exec(compile(block, f"{DOC} (code block {number})", "exec"), namespace)
    runs = tmp_path / "notebook"

    sft = namespace["sft"]
    assert isinstance(sft, api.StageResult) and sft.run_dir == runs / "sft" and sft.final == runs / "sft" / "final"
    assert (sft.final / "config.json").is_file() and (sft.run_dir / "metrics.jsonl").is_file()
    # 8 demonstrations, validation_fraction 0.25 -> 2 held out, 6 trained on; batch 2 -> 3 steps an epoch; 4 epochs
    assert sft.metrics["step"] == 12 and math.isfinite(sft.metrics["val/loss"])
    assert sft.metrics == sft.history()[-1] and len(sft.history()) == 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        sft.final = runs  # results are frozen

    grpo = namespace["grpo"]
    assert isinstance(grpo, api.StageResult) and (grpo.final / "config.json").is_file()
    assert namespace["grpo_config"].algorithm == "grpo"  # api.config("grpo", ...) is `prefer grpo`
    history = grpo.history()
    # 12 iterations of 4 prompts x 4 samples
    assert len(history) == 12 and grpo.metrics["step"] == 12 and grpo.metrics["episodes"] == 12 * 4 * 4
    for key in ("reward/proxy", "kl", "response/length", "train/policy/loss"):
        assert key in grpo.metrics, key
    # the proxy reward is the user's function: the mean of 16 negated word counts, a negative multiple of 1/16
    first = history[0]["reward/proxy"]
    assert first < 0 and first * 16 == pytest.approx(round(first * 16))
    rewards = [record["reward/proxy"] for record in history]
    assert sum(rewards[-3:]) > sum(rewards[:3]), rewards  # GRPO raised the reward it was given

    evaluations = namespace["evaluations"]
    brevity = namespace["brevity"]
    for name, evaluation in evaluations.items():
        assert isinstance(evaluation, api.EvaluationResult)
        assert evaluation.out == runs / f"{name}-evaluation.json" and evaluation.out.is_file()
        # 4 prompts x samples_per_prompt 4, prompt-major
        assert len(evaluation.samples) == 16 and evaluation.samples_per_prompt == 4 and len(evaluation.prompts) == 4
        assert set(evaluation.scores) == {"pii"} and len(evaluation.scores["pii"]["per_sample"]) == 16
    mean = {name: sum(brevity(e.samples)) / len(e.samples) for name, e in evaluations.items()}
    assert mean["grpo"] > mean["sft"], mean  # the trained policy's answers are shorter, on held-out draws


def test_configs_from_python_are_validated_as_on_the_command_line(tmp_path):
    values = {"model": {"init_from": "base"}, "data.demonstrations": tmp_path / "demos.jsonl"}
    sft = api.config("sft", values, overrides=["train.epochs=2", "optimizer.lr=1e-3"])
    assert (sft.train.epochs, sft.optimizer.lr, sft.data.demonstrations) == (2.0, 1e-3, str(tmp_path / "demos.jsonl"))
    assert sft.train.batch_size == 16  # SFT's own default, untouched
    again = api.config(sft, overrides=["train.epochs=3"])
    assert again.train.epochs == 3.0 and again.optimizer.lr == 1e-3 and sft.train.epochs == 2.0

    # the command's own defaults: `grpo` is `ppo algorithm=grpo` with GRPO's defaults (16 prompts, kl.coef 0.04)
    rl = {"model.init_from": "sft", "prompts": "prompts.jsonl", "reward.scorer": "pii"}
    grpo, ppo = api.config("grpo", rl), api.config("ppo", rl)
    assert (grpo.algorithm, grpo.train.batch_size, grpo.kl.coef) == ("grpo", 16, 0.04)
    assert (ppo.algorithm, ppo.train.batch_size, ppo.kl.coef) == ("ppo", 64, 0.02)

    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text("model: {init_from: base}\ndata: {demonstrations: d.jsonl}\ntrain: {epochs: 5}\n")
    assert api.config("sft", yaml=yaml_file, overrides=["train.batch_size=4"]).train.batch_size == 4

    refusals = {
        "config: train.epochs: must be positive": dict(values={**values, "train.epochs": -1}),
        "config: nope: Key 'nope' not in 'SFTConfig'": dict(values={**values, "nope": 1}),
        "config override 'train.epochs': expected key=value": dict(values=values, overrides=["train.epochs"]),
        "config: train.epochs: Value 'abc'": dict(values=values, overrides=["train.epochs=abc"]),
        "config: data.demonstrations: a demonstrations JSONL file is required": dict(values={}),
        "config: give values or a YAML file, not both": dict(values=values, yaml=yaml_file),
    }
    for message, arguments in refusals.items():
        with pytest.raises(PreferError) as error:
            api.config("sft", **arguments)
        assert str(error.value).startswith(message), (message, str(error.value))
    with pytest.raises(PreferError, match="unknown stage 'sfd'; choose one of"):
        api.config("sfd")


def test_a_python_scorer_is_checked_and_a_reward_is_negated():
    def words(texts):
        return [len(t.split()) for t in texts]

    assert api.as_scorer(words)(["a b", "c"]) == [2.0, 1.0]
    assert api.as_scorer(words, higher_is_better=True)(["a b", "c"]) == [-2.0, -1.0]
    words.higher_is_better = True  # the attribute `py:` scorers read, read here too
    assert api.as_scorer(words)(["a b"]) == [-2.0]

    bad = {
        "scorer 'short' returned 1 scores for 2 texts": lambda texts: [0.0],
        "scorer 'short' returned nan at index 1 of 2; scores must be finite": lambda texts: [0.0, float("nan")],
        "scorer 'short' raised ZeroDivisionError: division by zero": lambda texts: [1 / 0],
    }
    for message, fn in bad.items():
        with pytest.raises(PreferError) as error:
            api.as_scorer(fn, name="short")(["x", "y"])
        assert str(error.value) == message

    class Pairs:
        def __call__(self, texts):
            return [0.0] * len(texts)

        def score_pairs(self, prompts, responses):
            return [float(len(r)) for r in responses]

    scorer = api.as_scorer(Pairs())
    assert scorer.score_pairs(["p", "q"], ["ab", "c"]) == [2.0, 1.0]
    assert not hasattr(api.as_scorer(words), "score_pairs")  # a plain function is scored on whole texts
    with pytest.raises(PreferError, match="int object is not callable"):
        api.as_scorer(3)


def test_every_function_names_a_command_and_a_stage_that_exist():
    from prefer.config import STAGE_CONFIGS

    for command in api.STAGES:
        assert command in STAGE_CONFIGS, command  # api.config(command, ...) builds its config
        assert callable(api._stage(command)), command  # the stage function it calls is still where STAGES says
        assert callable(getattr(api, command)), command
