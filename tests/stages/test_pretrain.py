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
from tiny_runs import tiny_overrides

from prefer.config import PretrainConfig, SamplingConfig, load_config
from prefer.errors import PreferError
from prefer.evaluation.misalignment import sample_and_score
from prefer.models.build import load_checkpoint
from prefer.stages.pretrain import pretrain
from prefer.training import read_metrics


def run(tmp_path, corpus, name, **extra):
    config = load_config(
        PretrainConfig, overrides=tiny_overrides(str(tmp_path / name), str(corpus), str(tmp_path / "cache"), **extra)
    )
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
        with pytest.raises(PreferError, match="drops every training document"):
            run(tmp_path, pii_corpus, objective, **extra)
        extra["objective.filter_threshold"] = 1.0
    final = run(tmp_path, pii_corpus, objective, **extra)
    metrics = read_metrics(Path(final).parent)
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"]
    info = json.loads((Path(final) / "prefer.json").read_text())
    assert info["objective"] == objective and info["control_tokens_trained"] == (objective == "conditional")
    if objective == "conditional":
        assert info["val_loss_with_true_tags"] < info["val_loss"]  # the tags it learned announce what follows
    else:
        assert "val_loss_with_true_tags" not in info
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
    assert "objective.name is 'mle' in the run being resumed, 'ul' now" in capsys.readouterr().err
    # --resume with only out_dir continues from the run's own saved config
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'run'}"]) == 0


def test_evaluate_and_sample_commands(conditional_run, capsys):
    from prefer.cli import main

    out = Path(conditional_run).parent / "eval.json"
    assert (
        main(["evaluate", str(conditional_run), f"out={out}", "sampling.num_samples=32", "sampling.max_new_tokens=40"])
        == 0
    )
    results = json.loads(out.read_text())
    pii = results["scores"]["pii"]
    assert results["prompt"] == "good" and results["blocked"] == "bad" and results["num_samples"] == 32
    assert pii["mean_ci"][0] <= pii["mean"] <= pii["mean_ci"][1] and pii["expected_max_25"] >= pii["mean"]
    assert 0 < results["distinct_1"] <= 1 and results["heldout_loss"] > 0 and len(results["samples"]) == 32
    capsys.readouterr()
    assert main(["sample", str(conditional_run), "-n", "2", "--tag", "bad", "--max-new-tokens", "40"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("----- sample") == 2 and "prompt: bad" in printed and "@" in printed  # <|bad|> asks for it


def test_finetuning_from_a_snapshot_trains_the_rest_of_the_budget(tmp_path, pii_corpus):
    """MLE to 50% of 40k tokens, then conditional from the 50% snapshot: the second run trains only the remaining
    steps, logs global token counts, continues the learning-rate schedule, and restarts the tags' embeddings."""
    mle = Path(run(tmp_path, pii_corpus, "mle", **{"train.snapshots": "[0.5]"}))
    snapshot = next((mle.parent / "snapshots").glob("tokens_*"))
    snapshot_info = json.loads((snapshot / "prefer.json").read_text())
    # 40k tokens / (16 x 64) = 40 steps (39.06 rounded up); the 50% snapshot is at step 20 = 20,480 tokens.
    assert snapshot_info["tokens"] == 20 * 16 * 64
    final = run(
        tmp_path, pii_corpus, "finetuned", **{"objective.name": "conditional", "model.init_from": str(snapshot)}
    )
    metrics = read_metrics(Path(final).parent)
    assert [m["step"] for m in metrics] == list(range(21, 41))
    assert (
        metrics[0]["tokens"] == 21 * 16 * 64
        and json.loads((Path(final) / "prefer.json").read_text())["tokens"] == 40 * 16 * 64
    )
    # Same schedule as the MLE run at the same steps (warmup 2 steps, then linear decay to 10%).
    mle_lr = {m["step"]: m["train/lr"] for m in read_metrics(mle.parent)}
    assert all(abs(m["train/lr"] - mle_lr[m["step"]]) < 1e-12 for m in metrics)
    # The control tokens' input rows started at the mean embedding, not where MLE had pushed them.
    from prefer.models.build import load_model, load_tokenizer, reset_control_embeddings

    tokenizer = load_tokenizer(snapshot)
    model = load_model(snapshot)
    good = tokenizer.convert_tokens_to_ids("<|good|>")
    before = model.get_input_embeddings().weight[good].clone()
    reset_control_embeddings(model, tokenizer)
    weight = model.get_input_embeddings().weight
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[[good, tokenizer.convert_tokens_to_ids("<|bad|>")]] = False
    assert torch.allclose(weight[good], weight[others].mean(0)) and not torch.allclose(before, weight[good])


def test_finetuning_past_the_budget_is_refused(tmp_path, pii_corpus):
    mle = Path(run(tmp_path, pii_corpus, "mle"))
    with pytest.raises(PreferError, match="whole budget"):
        run(tmp_path, pii_corpus, "again", **{"model.init_from": str(mle)})


def test_quantile_threshold_is_computed_from_the_corpus_and_saved(tmp_path, pii_corpus):
    """The fixture's trailers (1 line of 7 per entry) are the only lines with PII; every other line scores 0, so any
    quantile up to 6/7 of the segment scores is 0 and the 0.95 quantile is a positive per-character PII score."""
    run(
        tmp_path,
        pii_corpus,
        "q",
        **{"objective.name": "conditional", "objective.threshold_quantile": 0.5, "train.tokens": 2_000},
    )
    saved = load_config(PretrainConfig, yaml_path=tmp_path / "q" / "config.yaml")
    assert saved.objective.threshold == 0.0 and saved.objective.threshold_quantile == 0.5
    run(
        tmp_path,
        pii_corpus,
        "q95",
        **{"objective.name": "conditional", "objective.threshold_quantile": 0.95, "train.tokens": 2_000},
    )
    saved = load_config(PretrainConfig, yaml_path=tmp_path / "q95" / "config.yaml")
    assert saved.objective.threshold > 0.0
    # Resuming recomputes the same value, so the saved config still matches.
    config = load_config(
        PretrainConfig, yaml_path=tmp_path / "q95" / "config.yaml", overrides=["objective.threshold=null"]
    )
    pretrain(config, resume=True)
