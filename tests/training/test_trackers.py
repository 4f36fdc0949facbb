"""runtime.trackers: each experiment tracker's local store holds the run's scalars, sample texts and config, read
back through the tracker's own reading API (TensorBoard's EventAccumulator, MlflowClient, trackio's SQLiteStorage and
Api, the W&B SDK's transaction-log reader `wandb leet inspect --json`); resume adds no duplicate point; a missing
package is one line naming the pip command. No network: W&B runs offline, MLflow and trackio write local stores."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# trackio reads TRACKIO_DIR once, when it is first imported (trackio.utils.TRACKIO_DIR): set it before anything does,
# so that no test writes to ~/.cache/huggingface/trackio.
if "trackio" not in sys.modules:
    os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="prefer-test-trackio-")
    atexit.register(shutil.rmtree, os.environ["TRACKIO_DIR"], ignore_errors=True)

from prefer.config import PolicyGradientConfig, build_config  # noqa: E402
from prefer.errors import PreferError  # noqa: E402
from prefer.run_dir import read_metrics  # noqa: E402
from prefer.training import trackers as trackers_module  # noqa: E402
from prefer.training.metrics import MetricsLog  # noqa: E402
from prefer.training.trackers import check_trackers, flatten_config  # noqa: E402

CONFIG = {"optimizer": {"lr": 0.001, "betas": [0.9, 0.95]}, "out_dir": "runs/x", "kl": {"target": None}}
# Hand-made points: loss falls 2.0 -> 1.5 -> 1.0; acc only at step 1; a string and a NaN at step 2 stay in
# metrics.jsonl (as "x" and null) and reach no tracker.
POINTS = [(1, {"loss": 2.0, "acc": 0.5}), (2, {"loss": 1.5, "note": "x", "bad": float("nan")}), (3, {"loss": 1.0})]
SAMPLE = "**proxy 0.250, gold None** `cat` -> `a a a`"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One sqlite store for the module: creating MLflow's tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def stores(tmp_path, monkeypatch, mlflow_uri):
    """Every tracker's store under tmp_path (W&B's offline runs, cache and settings too), nothing on the network."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) and anything else relative
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
    monkeypatch.delenv("TRACKIO_SERVER_URL", raising=False)
    (tmp_path / "wandb-home").mkdir()
    return tmp_path


def _log_points(log, points=POINTS, sample_step=2):
    for step, values in points:
        log.log(step, values)
        if step == sample_step:
            log.log_text("samples", SAMPLE, step)


# ------------------------------------------------------------------------------------------ readers, one per library


def tensorboard_points(run_dir, key):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(key)], events


def tensorboard_text(events, tag):
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(f"{tag}/text_summary")]


def mlflow_run(uri, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("prefer")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def mlflow_points(client, run, key):
    history = client.get_metric_history(run.info.run_id, key)
    return [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]


def trackio_logs(name):
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage.get_logs("prefer", name)


def trackio_config(name):
    import trackio

    (run,) = [run for run in trackio.Api().runs("prefer") if run.name == name]
    return run.config


def wandb_records(home):
    """Every record of every offline run under `home`, in order, through the W&B SDK's reader of its .wandb
    transaction log (`wandb leet inspect --json`, one JSON record per line)."""
    records = []
    for run_file in sorted((home / "wandb").glob("offline-run-*/run-*.wandb")):
        out = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        records += [{**json.loads(line), "dir": run_file.parent} for line in out.stdout.splitlines() if line.strip()]
    return records


def wandb_history(records, key):
    """(step, value) of `key` in the runs' history; a table is flattened there to `key._type`, `key.path`, ..."""
    points = []
    for record in records:
        item = record["history"]["item"] if record["type"] == "history" else {}
        if key in item:
            points.append((item["step"], item[key]))
        elif item.get(f"{key}._type") == "table-file":
            points.append((item["step"], record["dir"] / "files" / item[f"{key}.path"]))
    return points


# -------------------------------------------------------------------------------------------------------- config


def test_runtime_trackers_default_to_tensorboard_and_refuse_unknown_names():
    required = {"model.init_from": "sft", "prompts": "p.jsonl", "reward.scorer": "pii"}
    assert build_config(PolicyGradientConfig, required).runtime.trackers == ["tensorboard"]
    assert build_config(
        PolicyGradientConfig, {**required, "runtime.trackers": ["mlflow", "wandb"]}
    ).runtime.trackers == [
        "mlflow",
        "wandb",
    ]
    with pytest.raises(PreferError, match=r"^config: runtime.trackers: unknown tracker 'mlflw': choose from"):
        build_config(PolicyGradientConfig, {**required, "runtime.trackers": ["mlflw"]})
    with pytest.raises(PreferError, match="runtime.trackers: names a tracker twice"):
        build_config(PolicyGradientConfig, {**required, "runtime.trackers": ["mlflow", "mlflow"]})


def test_flatten_config_gives_dotted_keys():
    assert flatten_config(CONFIG) == {
        "optimizer.lr": 0.001,
        "optimizer.betas": [0.9, 0.95],
        "out_dir": "runs/x",
        "kl.target": None,
    }


@pytest.mark.parametrize(
    ("tracker", "module"), [("trackio", "trackio"), ("mlflow", "mlflow"), ("wandb", "wandb"), ("mlflow", "alembic")]
)
def test_a_missing_package_is_one_line_naming_the_pip_command(tracker, module, tmp_path, monkeypatch):
    real = trackers_module.importlib.util.find_spec
    monkeypatch.setattr(
        trackers_module.importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default store, sqlite, needs alembic
    with pytest.raises(PreferError) as error:
        check_trackers(["tensorboard", tracker])
    message = str(error.value)
    assert "\n" not in message and f"{tracker} needs the {module} package" in message
    assert "pip install 'prefer[trackers]'" in message
    # MetricsLog checks before it touches the run directory
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(PreferError, match=f"{tracker} needs the {module} package"):
        MetricsLog(tmp_path, trackers=[tracker])
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_a_file_mlflow_store_needs_no_database_package(monkeypatch):
    real = trackers_module.importlib.util.find_spec
    monkeypatch.setattr(
        trackers_module.importlib.util, "find_spec", lambda name, *a: None if name == "alembic" else real(name, *a)
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # a tracking server: no local database
    check_trackers(["mlflow"])


def test_an_unreadable_trackers_state_is_one_line_and_changes_nothing(tmp_path):
    (tmp_path / "trackers.json").write_text("{half")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    with pytest.raises(PreferError, match=r"trackers.json: not the trackers' state .*delete it"):
        MetricsLog(tmp_path, trackers=["tensorboard"], resume_step=1)
    assert len(read_metrics(tmp_path)) == 2 and not (tmp_path / "tensorboard").exists()


def test_only_rank_zero_opens_trackers(stores):
    log = MetricsLog(stores / "run", enabled=False, trackers=["tensorboard", "mlflow", "wandb", "trackio"])
    log.log(1, {"loss": 1.0})
    log.log_text("samples", SAMPLE, 1)
    log.close()
    assert not (stores / "run").exists() and log.trackers == []
    assert not list((stores / "wandb-home").iterdir())


# -------------------------------------------------------------------------------- each store holds the run's data


def test_tensorboard_holds_the_scalars_the_samples_and_the_config(stores):
    run = stores / "run"
    run.mkdir()
    log = MetricsLog(run, config=CONFIG)  # the default: trackers=("tensorboard",)
    _log_points(log)
    log.close()
    points, events = tensorboard_points(run, "loss")
    assert points == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert [(e.step, e.value) for e in events.Scalars("acc")] == [(1, 0.5)]
    assert "note" not in events.Tags()["scalars"] and "bad" not in events.Tags()["scalars"]
    assert tensorboard_text(events, "samples") == [(2, SAMPLE)]
    ((step, config),) = tensorboard_text(events, "config")
    assert step == 0 and json.loads(config.replace("\n    ", "\n")) == CONFIG
    assert read_metrics(run) == [
        {"step": 1, "loss": 2.0, "acc": 0.5},
        {"step": 2, "loss": 1.5, "note": "x", "bad": None},
        {"step": 3, "loss": 1.0},
    ]


def test_mlflow_store_holds_the_scalars_the_samples_and_the_config(stores, mlflow_uri):
    import mlflow

    run = stores / "run"
    run.mkdir()
    log = MetricsLog(run, trackers=["mlflow"], config=CONFIG, name=f"mlflow-{stores.name}")
    _log_points(log)
    log.close()
    assert not (run / "tensorboard").exists()  # only the trackers named
    client, found = mlflow_run(mlflow_uri, f"mlflow-{stores.name}")
    assert found.info.status == "FINISHED"
    assert mlflow_points(client, found, "loss") == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert mlflow_points(client, found, "acc") == [(1, 0.5)]
    assert set(found.data.metrics) == {"loss", "acc"}
    # the resolved config as the run's parameters, flattened; MLflow keeps every parameter as a string
    assert found.data.params == {
        "optimizer.lr": "0.001",
        "optimizer.betas": "[0.9, 0.95]",
        "out_dir": "runs/x",
        "kl.target": "null",
    }
    uri = f"runs:/{found.info.run_id}/samples/step_00000002.md"
    assert mlflow.artifacts.load_text(uri) == SAMPLE
    assert json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"] == found.info.run_id


def test_trackio_store_holds_the_scalars_the_samples_and_the_config(stores):
    run = stores / "run"
    run.mkdir()
    name = f"trackio-{stores.name}"
    log = MetricsLog(run, trackers=["trackio"], config=CONFIG, name=name)
    _log_points(log)
    log.close()
    logs = trackio_logs(name)
    assert [(r["step"], r["loss"]) for r in logs if "loss" in r] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert [(r["step"], r["acc"]) for r in logs if "acc" in r] == [(1, 0.5)]
    assert not any("note" in r or "bad" in r for r in logs)
    texts = [(r["step"], r["samples"]) for r in logs if "samples" in r]
    assert texts == [(2, {"_type": "trackio.markdown", "_value": SAMPLE})]
    config = trackio_config(name)
    assert {key: config[key] for key in CONFIG} == CONFIG
    assert Path(os.environ["TRACKIO_DIR"], "prefer.db").exists()  # the local store, not ~/.cache


def test_wandb_offline_run_holds_the_scalars_the_samples_and_the_config(stores):
    run = stores / "run"
    run.mkdir()
    log = MetricsLog(run, trackers=["wandb"], config=CONFIG)
    _log_points(log)
    log.close()
    records = wandb_records(stores / "wandb-home")
    assert wandb_history(records, "loss") == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert wandb_history(records, "acc") == [(1, 0.5)]
    assert not wandb_history(records, "note") and not wandb_history(records, "bad")
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    assert run_record["run_id"] == json.loads((run / "trackers.json").read_text())["wandb"]["id"]
    assert run_record["project"] == "prefer" and run_record["display_name"] == "run"
    assert {key: run_record["config"]["update"][key] for key in CONFIG} == CONFIG
    ((step, table_file),) = wandb_history(records, "samples")
    assert step == 2 and json.loads(table_file.read_text())["data"] == [[2, SAMPLE]]


# --------------------------------------------------------------------------------------- resume: no duplicate point


def test_resume_adds_no_duplicate_point_to_any_tracker(stores, mlflow_uri):
    """A run logs steps 1-5 (a sample at 4) and is killed; its checkpoint is step 3. The resumed run logs steps 4-6
    again with other values (and the sample at 4). Every store holds each step once. metrics.jsonl and TensorBoard
    (which purges) hold the rerun's values; MLflow, trackio and W&B cannot delete points, keep the killed run's
    (4: 4.0, 5: 5.0) and take the new step 6."""
    run = stores / "run"
    run.mkdir()
    name = f"resume-{stores.name}"
    everything = ["tensorboard", "mlflow", "trackio", "wandb"]
    first = MetricsLog(run, trackers=everything, config=CONFIG, name=name)
    _log_points(first, [(step, {"loss": float(step)}) for step in range(1, 6)], sample_step=4)
    first.close()
    second = MetricsLog(run, trackers=everything, config=CONFIG, name=name, resume_step=3)
    _log_points(second, [(step, {"loss": step + 0.5}) for step in range(4, 7)], sample_step=4)
    second.close()

    rerun = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5), (5, 5.5), (6, 6.5)]
    kept = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 6.5)]
    assert [(r["step"], r["loss"]) for r in read_metrics(run)] == rerun
    assert tensorboard_points(run, "loss")[0] == rerun
    client, found = mlflow_run(mlflow_uri, name)  # one run, continued
    assert mlflow_points(client, found, "loss") == kept
    logs = trackio_logs(name)
    assert [(r["step"], r["loss"]) for r in logs if "loss" in r] == kept
    assert [r["step"] for r in logs if "samples" in r] == [4]
    records = wandb_records(stores / "wandb-home")
    assert wandb_history(records, "loss") == kept
    assert [step for step, _ in wandb_history(records, "samples")] == [4]
    assert len({r["run"]["run_id"] for r in records if r["type"] == "run"}) == 1  # the same W&B run, resumed


def test_a_tracker_added_on_resume_starts_with_the_kept_points(stores, mlflow_uri):
    run = stores / "run"
    run.mkdir()
    name = f"added-{stores.name}"
    first = MetricsLog(run, trackers=["tensorboard"], config=CONFIG, name=name)
    _log_points(first, [(step, {"loss": float(step)}) for step in range(1, 6)])
    first.close()
    second = MetricsLog(run, trackers=["mlflow"], config=CONFIG, name=name, resume_step=3)
    _log_points(second, [(step, {"loss": step + 0.5}) for step in range(4, 7)])
    second.close()
    client, found = mlflow_run(mlflow_uri, name)
    # steps 1-3 from metrics.jsonl when the run started, then the rerun's 4-6
    assert mlflow_points(client, found, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5), (5, 5.5), (6, 6.5)]


# ------------------------------------------------------------------------------------------ end to end: prefer ppo


@pytest.mark.stage
def test_prefer_ppo_logs_to_mlflow_and_wandb(stores, mlflow_uri):
    import mlflow
    import torch
    from toy_scorers import spec

    from prefer.cli import main
    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model
    from prefer.training import save_model

    torch.manual_seed(0)
    words = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree"]
    tokenizer = train_tokenizer([" ".join(words[i:] + words[:i]) + "." for i in range(8)] * 20, vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    save_model(stores / "sft", model, tokenizer, info={"task": "toy"})
    (stores / "prompts.jsonl").write_text("".join(json.dumps({"prompt": w}) + "\n" for w in words))
    not_a = spec("not_a")  # the toy reward, named as a user names their own scorer
    out = stores / "ppo-e2e"
    code = main(
        [
            "ppo",
            f"out_dir={out}",
            f"model.init_from={stores / 'sft'}",
            f"prompts={stores / 'prompts.jsonl'}",
            f"reward.scorer={not_a}",
            "train.iterations=2",
            "train.batch_size=4",
            "train.minibatch_size=4",
            "train.epochs=1",
            "train.log_samples=2",
            "rollout.max_new_tokens=4",
            "runtime.progress=false",
            "runtime.trackers=[mlflow,wandb]",
        ]
    )
    assert code == 0
    jsonl = [r for r in read_metrics(out) if isinstance(r.get("reward/proxy"), float)]
    assert len(jsonl) == 2, read_metrics(out)
    assert not (out / "tensorboard").exists()
    client, found = mlflow_run(mlflow_uri, out.name)
    assert mlflow_points(client, found, "reward/proxy") == [(r["step"], r["reward/proxy"]) for r in jsonl]
    assert found.data.params["train.iterations"] == "2" and found.data.params["reward.scorer"] == not_a
    samples = [a.path for a in client.list_artifacts(found.info.run_id, "samples")]
    assert samples, "the sample tables reach MLflow once prefer/rl/episodes.py calls log.log_text"
    assert "->" in mlflow.artifacts.load_text(f"runs:/{found.info.run_id}/{samples[0]}")
    records = wandb_records(stores / "wandb-home")
    assert wandb_history(records, "reward/proxy") == [(r["step"], r["reward/proxy"]) for r in jsonl]


@pytest.mark.stage
def test_prefer_ppo_with_a_missing_tracker_package_exits_2_before_loading_anything(tmp_path, monkeypatch, capsys):
    from prefer.cli import main

    real = trackers_module.importlib.util.find_spec
    monkeypatch.setattr(
        trackers_module.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    out = tmp_path / "ppo"
    argv = ["ppo", f"out_dir={out}", f"model.init_from={tmp_path / 'no-such-model'}", f"prompts={tmp_path / 'p.jsonl'}"]
    code = main([*argv, "reward.scorer=pii", "runtime.trackers=[tensorboard,wandb]", "runtime.progress=false"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    # one line, naming the pip command; nothing was loaded (the missing model directory was never opened)
    assert error.count("\n") == 0 and "wandb needs the wandb package" in error and "pip install" in error, error
    assert not (out / "config.yaml").exists()
