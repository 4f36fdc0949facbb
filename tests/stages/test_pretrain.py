"""End-to-end CPU runs of the pretraining stage on a tiny model: behaviour, resume after a kill, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from prefer.config import PretrainConfig, SamplingConfig, load_config
from prefer.stages.evaluate import load_checkpoint, sample_and_score
from prefer.stages.pretrain import pretrain
from prefer.training import read_metrics


def run(tmp_path, corpus, name, **extra):
    config = load_config(PretrainConfig, overrides=tiny_overrides(
        str(tmp_path / name), str(corpus), str(tmp_path / "cache"), **extra))
    return pretrain(config)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, pii_corpus):
    tmp = tmp_path_factory.mktemp("conditional")
    return run(tmp, pii_corpus, "conditional", **{"objective.name": "conditional", "train.tokens": 240_000})


def test_conditional_model_is_steered_by_its_tag(conditional_run):
    """<|good|> should suppress the email trailer that <|bad|> asks for."""
    model, tokenizer, info = load_checkpoint(conditional_run, torch.device("cpu"))
    assert info["objective"] == "conditional" and info["control_tokens_trained"]
    sampling = SamplingConfig(num_samples=96, max_new_tokens=60, batch_size=96, temperature=1.0, top_p=1.0)
    good = sample_and_score(model, tokenizer, info, task_name="pii", sampling=sampling, progress=False)
    bad = sample_and_score(model, tokenizer, info, task_name="pii", sampling=sampling, prompt="bad", progress=False)
    assert good["prompt"] == "good" and good["blocked"] == "bad"
    good_any = sum(s > 0 for s in good["scores"]["pii"]["per_sample"])
    bad_any = sum(s > 0 for s in bad["scores"]["pii"]["per_sample"])
    assert bad_any >= 48 and good_any <= bad_any / 3, (good_any, bad_any)  # measured: 8 vs 90 of 96


def test_checkpoint_is_plain_hugging_face(conditional_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(conditional_run)
    tokenizer = AutoTokenizer.from_pretrained(conditional_run)
    prompt = tokenizer("<|endoftext|><|good|>", return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert output.shape[1] > prompt["input_ids"].shape[1]
    assert {"<|good|>", "<|bad|>"} <= set(tokenizer.get_vocab())


def test_run_records_config_data_and_learning_curve(conditional_run):
    run_dir = Path(conditional_run).parent
    saved = load_config(PretrainConfig, yaml_path=run_dir / "config.yaml")
    assert saved.objective.threshold == 0.0 and saved.objective.drop_fraction == 0.01  # resolved from the task
    data = json.loads((run_dir / "data.json").read_text())
    assert data["score_summary"]["fraction_bad_segments"] > 0.05
    losses = [m["val/loss"] for m in read_metrics(run_dir) if "val/loss" in m]
    assert losses[-1] < losses[0] - 1.0  # it learned


@pytest.mark.parametrize("objective", ["ul", "rwr", "awr", "filtering"])
def test_every_objective_trains(tmp_path, pii_corpus, objective):
    extra = {"objective.name": objective, "train.tokens": 20_000}
    if objective == "filtering":
        extra["objective.filter_threshold"] = 0.0  # every document has a trailer: keep none -> clear error
        with pytest.raises(Exception, match="drops every training document"):
            run(tmp_path, pii_corpus, objective, **extra)
        extra["objective.filter_threshold"] = 1.0
    final = run(tmp_path, pii_corpus, objective, **extra)
    metrics = read_metrics(Path(final).parent)
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"]
    if objective == "awr":
        from safetensors.torch import load_file

        head = load_file(Path(final) / "value_head.safetensors")
        assert head["linear.weight"].abs().sum() > 0  # started at zero: the value head trained
        assert "train/value_loss" in metrics[-1] and "train/lm_loss" in metrics[-1]  # logged separately
    if objective == "ul":
        assert metrics[0]["train/fraction_bad"] > 0


def _cli(*args):
    return [sys.executable, "-m", "prefer.cli", *args]


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, pii_corpus):
    common = {"train.tokens": 80_000, "train.checkpoint_every": 5, "model.dropout": 0.1}
    reference = tiny_overrides(str(tmp_path / "reference"), str(pii_corpus), str(tmp_path / "cache"), **common)
    subprocess.run(_cli("pretrain", *reference), check=True, capture_output=True)

    killed = tiny_overrides(str(tmp_path / "killed"), str(pii_corpus), str(tmp_path / "cache"), **common)
    process = subprocess.Popen(_cli("pretrain", *killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step_00000015"):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it could be killed"
    subprocess.run(_cli("pretrain", "--resume", *killed), check=True, capture_output=True)

    def losses(name):
        return [(m["step"], m["train/loss"], m.get("val/loss")) for m in read_metrics(tmp_path / name)]

    assert losses("killed") == losses("reference")
    assert len(losses("reference")) == 79  # ceil(80_000 / (16 x 64)) steps, each logged once


def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path, pii_corpus, capsys):
    from prefer.cli import main

    def fails(*args):
        assert main(list(args)) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("prefer: error: ") and "\n" not in message
        return message

    base = tiny_overrides(str(tmp_path / "run"), str(pii_corpus), str(tmp_path / "cache"))
    assert "objective.name" in fails("pretrain", *base, "objective.name=dpo")
    assert "train.lx" in fails("pretrain", *base, "train.lx=1")
    assert "model.size" in fails("pretrain", *base, "model.size=huge")
    assert "nope.jsonl" in fails("pretrain", *base, f"data.source={tmp_path / 'nope.jsonl'}")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert f"{latin1}:2" in fails("pretrain", *base, f"data.source={latin1}")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "empty.jsonl: no records" in fails("pretrain", *base, f"data.source={empty}")
    assert "not a directory" in fails("evaluate", str(tmp_path / "missing"))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.safetensors"))
    # the real command exits 2 too
    result = subprocess.run(_cli("pretrain", "objective.name=dpo"), capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_a_checkpoint_only_resumes_its_own_run(tmp_path, pii_corpus, capsys):
    from prefer.cli import main

    base = tiny_overrides(str(tmp_path / "run"), str(pii_corpus), str(tmp_path / "cache"), **{"train.tokens": 4_000})
    assert main(["pretrain", *base]) == 0
    assert main(["pretrain", *base]) == 2  # never overwrite a finished run by accident
    assert "--resume" in capsys.readouterr().err
    assert main(["pretrain", "--resume", *base, "objective.name=ul"]) == 2
    assert "section 'objective' differs" in capsys.readouterr().err
    # --resume with only out_dir continues from the run's own saved config
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'run'}"]) == 0


def test_evaluate_and_sample_commands(conditional_run, capsys):
    from prefer.cli import main

    out = Path(conditional_run).parent / "eval.json"
    assert main(["evaluate", str(conditional_run), f"out={out}", "sampling.num_samples=32",
                 "sampling.max_new_tokens=40"]) == 0
    results = json.loads(out.read_text())
    pii = results["scores"]["pii"]
    assert results["prompt"] == "good" and results["blocked"] == "bad" and results["num_samples"] == 32
    assert pii["mean_ci"][0] <= pii["mean"] <= pii["mean_ci"][1] and pii["expected_max_25"] >= pii["mean"]
    assert 0 < results["distinct_1"] <= 1 and results["heldout_loss"] > 0 and len(results["samples"]) == 32
    capsys.readouterr()
    assert main(["sample", str(conditional_run), "-n", "2", "--prompt", "bad", "--max-new-tokens", "40"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("----- sample") == 2 and "prompt: bad" in printed and "@" in printed  # <|bad|> asks for it


def test_demo_end_to_end_on_a_tiny_model(tmp_path, pii_corpus):
    """The main job on a tiny budget: both models train, the table and plot appear, and conditional training
    lowers PII (the synthetic corpus makes the effect large even at this size)."""
    from prefer.config import DemoConfig
    from prefer.demo import demo

    overrides = [f"out_dir={tmp_path / 'demo'}", "sampling.num_samples=64", "sampling.batch_size=64",
                 "sampling.max_new_tokens=48", "curve_samples=32", "pretrain.train.snapshots=[0.5]"]
    overrides += ["pretrain." + item for item in tiny_overrides("unused", str(pii_corpus), str(tmp_path / "cache"),
                                                                **{"train.tokens": 120_000})
                  if not item.startswith("out_dir")]
    results = demo(load_config(DemoConfig, overrides=overrides))
    out = tmp_path / "demo" / "pii"
    assert (out / "results.md").read_text().count("| conditional") == 2  # the model and its <|bad|> contrast
    assert (out / "misalignment_vs_tokens.png").stat().st_size > 10_000
    assert [len(e["curve"]) for e in results["objectives"].values()] == [2, 2]  # 50% snapshot + final
    comparison = results["comparison"]["conditional"]["pii"]
    assert comparison["mle_over_objective"] > 2 and comparison["ci"][0] > 1
    bad = results["objectives"]["conditional"]["prompted_bad"]["scores"]["pii"]["mean"]
    good = results["objectives"]["conditional"]["evaluation"]["scores"]["pii"]["mean"]
    assert bad > 2 * good
