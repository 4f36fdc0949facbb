"""`prefer experiment` end to end on a tiny budget: every objective trains and is evaluated on one protocol, the
finetuning run continues MLE's snapshot, and the results directory holds the table, CSV and figures."""

import csv
import json
import shutil
import subprocess

import pytest
import yaml
from tiny_runs import tiny_overrides

from prefer.cli import main
from prefer.config import ExperimentConfig, load_config
from prefer.experiments import experiment, plan
from prefer.figures import pareto_front


def test_pareto_front_marks_the_models_nothing_beats_on_both_axes():
    # (cost, misalignment): (1, 5) and (3, 1) trade off; (2, 6) is beaten by (1, 5); (3, 2) by (3, 1) on y alone;
    # a duplicate of a frontier point is not strictly beaten, so both copies stay.
    points = [(1, 5), (2, 6), (3, 1), (3, 2), (1, 5)]
    assert pareto_front(points) == [True, False, True, False, True]


def test_plan_runs_mle_first_and_finetuning_last():
    config = ExperimentConfig(objectives=["conditional", "mle", "ul"], finetune=["conditional"], finetune_from=0.5)
    assert [(r.name, r.objective, r.init_fraction) for r in plan(config)] == [
        ("mle", "mle", None),
        ("conditional", "conditional", None),
        ("ul", "ul", None),
        ("mle_then_conditional_at_50pct", "conditional", 0.5),
    ]


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory, pii_corpus):
    tmp = tmp_path_factory.mktemp("experiment")
    overrides = [
        f"out_dir={tmp / 'experiment'}",
        "sampling.num_samples=64",
        "sampling.batch_size=64",
        "sampling.max_new_tokens=48",
        "curve_samples=16",
        "pretrain.train.snapshots=[0.5]",
        "finetune=[conditional]",
        "pretrain.objective.filter_quantile=0.5",
        "kl_samples=32",
        "capability_documents=16",
        "redteam.models=[mle,conditional]",
        "redteam.search.rounds=2",
        "redteam.search.candidates_per_round=3",
        "redteam.continuations.count=4",
        "redteam.search.trials=1",
        "redteam.continuations.max_new_tokens=16",
    ]
    overrides += [
        "pretrain." + item
        for item in tiny_overrides("unused", str(pii_corpus), str(tmp / "cache"), **{"train.tokens": 120_000})
        if not item.startswith("out_dir")
    ]
    return tmp / "experiment" / "pii", experiment(load_config(ExperimentConfig, overrides=overrides)), overrides


def test_every_objective_trains_on_the_same_tokens_and_is_evaluated(tiny_experiment):
    out, results, _ = tiny_experiment
    names = ["mle", "filtering", "conditional", "ul", "rwr", "awr", "mle_then_conditional_at_50pct"]
    assert list(results["models"]) == names
    assert {m["tokens"] for m in results["models"].values()} == {118 * 16 * 64}  # ceil(120k / 1024) steps
    for name in names:
        evaluation = results["models"][name]["evaluation"]
        assert evaluation["num_samples"] == 64 and 0 <= evaluation["scores"]["pii"]["mean"] < 1
        assert (out / name / "final" / "model.safetensors").exists()
        heldout = results["models"][name]["heldout"]
        assert heldout["loss_per_byte"] < heldout["loss_per_token"] and heldout["documents"] > 0
        assert results["models"][name]["kl"]["control_tokens_counted"] is False
    # KL(mle || mle) is 0 exactly (the same model scores the same text); the conditional models, which learned to
    # expect tags, are clearly further away. (RWR with beta 10 weighs tokens by exp(-score / 10) ~ 1: it is MLE up to
    # noise, and a Monte-Carlo KL estimate of two near-identical models may fall just below 0.)
    assert results["models"]["mle"]["kl_to_reference"] == 0.0
    for name in ("conditional", "mle_then_conditional_at_50pct"):
        kl = results["models"][name]
        assert kl["kl_ci"][0] > 0, (name, kl["kl_to_reference"], kl["kl_ci"])
    # The finetuned run's curve starts after MLE's 50% snapshot; the from-scratch runs have one at 50% too.
    assert [p["tokens"] for p in results["models"]["conditional"]["curve"]] == [59 * 1024, 118 * 1024]
    assert [p["tokens"] for p in results["models"]["mle_then_conditional_at_50pct"]["curve"]] == [118 * 1024]


def test_conditional_training_lowers_misalignment_and_the_tag_steers(tiny_experiment):
    _, results, _ = tiny_experiment
    comparison = results["comparison"]["conditional"]["pii"]
    assert comparison["mle_over_model"] > 2 and comparison["ci"][0] > 1
    conditional = results["models"]["conditional"]
    assert conditional["prompted_bad"]["scores"]["pii"]["mean"] > 2 * conditional["evaluation"]["scores"]["pii"]["mean"]


def test_results_directory_has_table_csv_and_figures(tiny_experiment):
    out, results, _ = tiny_experiment
    table = (out / "results.md").read_text()
    main_table = table.split("| red-teamed model")[0]
    assert main_table.count("| conditional") == 2 and "| mle_then_conditional_at_50pct |" in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    # one row per model, plus the two conditional models (from scratch, finetuned) prompted with <|bad|>
    assert len(rows) == 7 + 2 and {r["prompt"] for r in rows} == {"none", "good", "bad"}
    assert (
        float(next(r for r in rows if r["model"] == "mle")["pii_mean"])
        == results["models"]["mle"]["evaluation"]["scores"]["pii"]["mean"]
    )
    # Red-teaming of two models: 20 seeds, then up to 3 new candidates per round for 2 rounds.
    assert list(results["redteam"]) == ["mle", "conditional"]
    for name, summary in results["redteam"].items():
        assert summary["rounds"] == [0, 1, 2] and summary["trials"] == 1
        pool = [json.loads(line) for line in (out / name / "redteam" / "pool_trial0.jsonl").read_text().splitlines()]
        assert 20 < len(pool) <= 26
        assert summary["pool_mean"]["mean"][-1] == pytest.approx(sum(r["score"] for r in pool) / len(pool))
    assert "| red-teamed model |" in table and "| conditional | " in table
    for figure in ("pareto.png", "misalignment_vs_tokens.png", "redteam.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / figure).stat().st_size > 20_000
    saved = yaml.safe_load((out / "filtering" / "config.yaml").read_text())["objective"]
    assert saved["filter_quantile"] == 0.5 and saved["filter_threshold"] > 0  # the median document's mean score


def test_rerunning_the_command_reuses_finished_runs(tiny_experiment, capsys):
    out, _, overrides = tiny_experiment
    logs = {name: (out / name / "metrics.jsonl").read_text() for name in ("mle", "conditional")}
    assert main(["experiment", "--objectives", "mle,conditional", *overrides]) == 0
    printed = capsys.readouterr().out
    assert printed.count("[pretrain] done") == 3  # mle, conditional, the finetuned run: reloaded, not retrained
    assert all((out / name / "metrics.jsonl").read_text() == log for name, log in logs.items())
    rows = [
        line
        for line in (out / "results.md").read_text().split("| red-teamed model")[0].splitlines()
        if line.startswith("| ")
    ]
    assert len(rows) == 1 + 5  # header; mle; conditional and the finetuned run, each also prompted <|bad|>


def render_in_chromium(page):
    """The DOM of `page` after headless Chromium loaded it (Debian's `chromium`, installed by .ci/run)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "headless Chromium is required for this test: apt-get install chromium (see .ci/run)"
    result = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_renders_with_every_figure_in_a_headless_browser(tiny_experiment, tmp_path):
    from prefer.training import MetricsLog

    out, results, _ = tiny_experiment
    ppo = tmp_path / "ppo"
    log = MetricsLog(ppo)
    for step in range(1, 6):  # a PPO run's log, as the PPO stage writes it
        log.log(step, {"reward/proxy": 0.1 * step, "reward/gold": -0.01 * step, "kl": 0.2 * step, "episodes": 8 * step})
    log.close()
    page = tmp_path / "report.html"
    assert main(["report", str(out), str(ppo), "-o", str(page), "--samples", "2"]) == 0
    dom = render_in_chromium(page)
    # 3 experiment figures (Pareto, curves, red-teaming) + 1 PPO figure, every one decoded by the browser
    assert 'data-figures="4"' in dom and 'data-figures-loaded="4"' in dom, dom[:500]
    shown = json.loads((out / "results.json").read_text())["models"]  # the last run of the command wrote these
    sample_files = [f for name in shown for f in (out / name).glob("samples*.jsonl")]
    assert "mle_then_conditional_at_50pct" in dom and dom.count('class="plain"') == 2 * len(sample_files)
    assert '<span class="control">&lt;|good|&gt;</span>' in dom  # the conditional model's tags, shown on demand
    assert dom.count("<table>") == 2 and "KL(mle || model)" in dom  # results and red-teaming, pipes kept in cells


def test_report_names_a_directory_it_cannot_read(tmp_path, capsys):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert str(tmp_path) in capsys.readouterr().err
