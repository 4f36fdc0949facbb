"""A run owns its directory, and a damaged or interrupted run resumes exactly: the lock (held for the run's life,
never stale after a kill), staging left by killed atomic writes, a half-written metrics line, a full disk during a
checkpoint, the final log line written once, Ctrl-C at any moment."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_overrides

from prefer.cli import main
from prefer.errors import PreferError
from prefer.files import atomic_path, clean_staging
from prefer.run_dir import RESUME_MAY_CHANGE, claim_run_dir, config_difference, holds_run_dir, release_run_dir
from prefer.training import MetricsLog, read_metrics, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def base(out_dir, corpus, cache, **extra):
    return tiny_overrides(str(out_dir), str(corpus), str(cache), **{"train.tokens": 4_000, **extra})


@pytest.fixture(scope="module")
def cache(tmp_path_factory, pii_corpus):
    """The tiny corpus scored once into a cache every run of this module reads."""
    path = tmp_path_factory.mktemp("cache")
    assert main(["corpus", *base(path / "unused", pii_corpus, path)]) == 0
    return path


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "prefer", *map(str, argv)]


def hold(directory: Path) -> subprocess.Popen:
    code = (
        "import sys; from prefer.run_dir import claim_run_dir; claim_run_dir(sys.argv[1]); print('held', "
        "flush=True); sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert process.stdout.readline().strip() == "held"
    return process


# ---------------------------------------------------------------- the lock


def test_lock_refuses_a_second_process_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    other = hold(run)
    try:
        with pytest.raises(PreferError, match=rf"out_dir: {run} is in use by another run \(pid {other.pid}"):
            claim_run_dir(run)
    finally:
        other.send_signal(signal.SIGKILL)  # as a killed run: no cleanup of its own
        other.wait()
    assert (run / ".lock").exists()  # the file stays; the lock died with its process
    claim_run_dir(run)
    assert holds_run_dir(run)
    claim_run_dir(run)  # re-entrant in the same process
    release_run_dir(run)
    assert not holds_run_dir(run)


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PreferError, match="out_dir: .*f exists and is not a directory"):
        claim_run_dir(tmp_path / "f")
    with pytest.raises(PreferError, match="out_dir: cannot create"):
        claim_run_dir(tmp_path / "f" / "run")


def test_two_runs_started_at_the_same_moment_on_one_out_dir(tmp_path, pii_corpus, cache):
    """Exactly one trains; the other is refused with one line; the metrics are one run's, in order."""
    run = tmp_path / "run"
    argv = cli("pretrain", *base(run, pii_corpus, cache))
    runs = [
        subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.count("\n") == 1 and ("in use by another run" in refused or "already holds a run" in refused)
    steps = [m["step"] for m in read_metrics(run) if "train/loss" in m]
    assert steps == list(range(1, len(steps) + 1))


def test_stale_lock_of_a_killed_run_does_not_block_resume(tmp_path, pii_corpus, cache, one_thread):
    run = tmp_path / "run"
    assert main(["pretrain", *base(run, pii_corpus, cache)]) == 0
    other = hold(run)
    other.send_signal(signal.SIGKILL)
    other.wait()
    assert main(["pretrain", "--resume", f"out_dir={run}"]) == 0


def test_config_difference_names_the_first_differing_dotted_key_and_skips_the_allowed_ones():
    saved = {"out_dir": "a", "optimizer": {"lr": 1e-3, "beta1": 0.9}, "runtime": {"seed": 0, "progress": True}}
    assert config_difference(saved, saved) is None
    moved = {"out_dir": "b", "optimizer": {"lr": 1e-3, "beta1": 0.9}, "runtime": {"seed": 0, "progress": False}}
    assert config_difference(saved, moved) is None  # out_dir and progress may change
    assert config_difference(saved, {**moved, "optimizer": {"lr": 2e-3, "beta1": 0.9}}) == ("optimizer.lr", 1e-3, 2e-3)
    assert config_difference(saved, {**saved, "runtime": {"seed": 1, "progress": True}}) == ("runtime.seed", 0, 1)
    assert config_difference(saved, {**saved, "new": 1}) == ("new", "<absent>", 1)
    assert (
        config_difference(
            {"train": {"iterations": 5}}, {"train": {"iterations": 9}}, may_change=RESUME_MAY_CHANGE | {"iterations"}
        )
        is None
    )


# ---------------------------------------------------------------- leftovers, metrics, final line


def test_clean_staging_removes_killed_writes_and_restores_a_half_swapped_directory(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name in (".step_00000004.a1b2c3d4", ".step_00000004.optimizer"):
        (checkpoints / name / "model").mkdir(parents=True)
    (tmp_path / ".final.old").mkdir()  # killed between the two renames of a final/ swap: final/ is missing
    (tmp_path / ".final.old" / "config.json").write_text("{}")
    (tmp_path / ".config.yaml.zz99yy88").mkdir()
    (tmp_path / ".lock").write_text("")
    (checkpoints / "step_00000004").mkdir()
    removed = clean_staging(tmp_path)
    assert sorted(p.name for p in removed) == [
        ".config.yaml.zz99yy88",
        ".step_00000004.a1b2c3d4",
        ".step_00000004.optimizer",
    ]
    assert (tmp_path / "final" / "config.json").exists() and (tmp_path / ".lock").exists()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000004"]


def test_resume_drops_a_half_written_metrics_line_and_cleans_staging(tmp_path, pii_corpus, cache, one_thread):
    """A run killed mid-append after its step-4 checkpoint resumes to exactly the uninterrupted run's metrics."""
    run = tmp_path / "run"
    overrides = base(run, pii_corpus, cache, **{"train.tokens": 8_000, "train.checkpoint_every": 4})
    assert main(["pretrain", *overrides]) == 0
    reference = read_metrics(run)
    assert [m["step"] for m in reference] == list(range(1, 9))
    # As if killed while appending step 6 (steps 5, 6 ran after the step-4 checkpoint), during atomic writes
    shutil.rmtree(run / "final")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])
    staging = [run / "checkpoints" / ".step_00000008.q1w2e3r4", run / ".final.a9s8d7f6"]
    for path in staging:
        path.mkdir()
    assert main(["pretrain", "--resume", f"out_dir={run}"]) == 0
    assert read_metrics(run) == reference
    assert not any(path.exists() for path in staging)


def test_a_garbled_metrics_line_before_the_last_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(PreferError, match=r"metrics.jsonl:2: not a metrics record"):
        read_metrics(tmp_path)
    log = MetricsLog(tmp_path, resume_step=1, enabled=False)  # disabled logs (other ranks) never read it
    assert log.writer is None


def test_reward_final_line_is_logged_once_when_resumed(tmp_path, one_thread):
    from prefer.data.formats import Comparison, write_rankings
    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model

    tokenizer = train_tokenizer([f"say {c}: {c * 4}" for c in "ABCDEFGH"] * 20, vocab_size=300)
    torch.manual_seed(0)
    build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32).save_pretrained(
        tmp_path / "lm"
    )
    tokenizer.save_pretrained(tmp_path / "lm")
    write_rankings(tmp_path / "r.jsonl", [Comparison(f"say {c}:", (f" {c * 4}", " no"), (0, 1)) for c in "ABCDEFGH"])
    argv = [
        "reward",
        f"out_dir={tmp_path / 'rm'}",
        f"data.rankings={tmp_path / 'r.jsonl'}",
        f"model.init_from={tmp_path / 'lm'}",
        "runtime.progress=false",
        "train.batch_size=2",
    ]
    assert main(argv) == 0
    assert main([argv[0], "--resume", *argv[1:]]) == 0  # a finished run resumed: final/ rewritten, not re-logged
    final_lines = [m for m in read_metrics(tmp_path / "rm") if "final/reward_bias" in m]
    assert len(final_lines) == 1


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def file_size_limit():
    """Writes beyond `limit` bytes per file fail with EFBIG, as on a full disk (SIGXFSZ ignored, as it is fatal)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(size: int):
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, file_size_limit):
    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model
    from prefer.training import make_optimizer, make_scheduler

    tokenizer = train_tokenizer(["some text"] * 10, vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    optimizer = make_optimizer([model], lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95))
    model(torch.zeros(1, 4, dtype=torch.long)).logits.sum().backward()
    optimizer.step()  # optimizer state makes trainer_state.pt about twice the model
    scheduler = make_scheduler(optimizer, total_steps=10, warmup_steps=1, min_lr_fraction=0.1)
    save = lambda step: save_checkpoint(
        tmp_path,
        step,
        model=model,
        tokenizer=tokenizer,
        extra={},
        info={},  # noqa: E731
        optimizer=optimizer,
        scheduler=scheduler,
        state={"step": step},
    )
    first = save(1)
    size = (first / "model" / "model.safetensors").stat().st_size
    file_size_limit(size + 50_000)  # the model fits; the trainer state does not
    with pytest.raises(PreferError, match=r"step_00000002: cannot write \(.*\); free space or fix permissions"):
        save(2)
    file_size_limit(resource.RLIM_INFINITY)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    torch.load(first / "trainer_state.pt", weights_only=False)  # intact


def test_disk_full_during_pretraining_is_one_line(tmp_path, pii_corpus, cache, file_size_limit, capfd, one_thread):
    run = tmp_path / "run"
    overrides = base(run, pii_corpus, cache)
    capfd.readouterr()
    file_size_limit(800_000)  # the tiny model (~0.5 MB) fits, its trainer state (~1 MB) does not
    assert main(["pretrain", *overrides]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prefer: error: "), err
    assert "cannot write" in err and "step_" in err


def test_atomic_write_over_a_directory_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(PreferError, match="is a directory, where a file is to be written"):
        with atomic_path(tmp_path / "out") as tmp:
            tmp.write_text("x")
    assert (tmp_path / "out").is_dir() and [p.name for p in tmp_path.iterdir()] == ["out"]


# ---------------------------------------------------------------- Ctrl-C


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_ctrl_c_mid_run_exits_130_with_one_line_and_resumes(tmp_path, pii_corpus, cache):
    run = tmp_path / "run"
    # 156 steps of which the signal lands after the 2nd: a loaded machine may be slow to deliver it (CI once saw
    # a 40-step run finish first)
    overrides = base(run, pii_corpus, cache, **{"train.tokens": 160_000, "train.checkpoint_every": 2})
    process = subprocess.Popen(
        cli("pretrain", *overrides), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(run / "checkpoints" / "latest", process)
    process.send_signal(signal.SIGINT)
    code, err = process.wait(timeout=120), process.stderr.read()
    assert code == 130 and err.count("\n") == 1 and err.startswith("prefer: interrupted; "), err
    assert "--resume" in err
    resumed = subprocess.run(
        cli("pretrain", "--resume", f"out_dir={run}"), env=ENV, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "final" / "model.safetensors").exists()


def test_ctrl_c_just_after_final_is_written_leaves_no_traceback(tmp_path, pii_corpus, cache):
    run = tmp_path / "run"
    process = subprocess.Popen(
        cli("pretrain", *base(run, pii_corpus, cache)),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(run / "final", process)
    process.send_signal(signal.SIGINT)
    code, err = process.wait(timeout=120), process.stderr.read()
    assert code in (0, 130), err  # 0 if it landed after the command returned; 130 (resumable) before
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert code == 0 or err.startswith("prefer: interrupted; ")


def test_a_ctrl_c_that_lands_in_a_finalizer_is_delivered_again(monkeypatch):
    """Python drops an exception raised in `__del__` (it goes to sys.unraisablehook): a Ctrl-C landing there would
    be lost and the run would carry on. prefer's hook sends SIGINT again, outside the finalizer."""
    from prefer import cli as prefer_cli

    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:

        class Finalized:
            def __del__(self):
                raise KeyboardInterrupt  # as if the Ctrl-C had landed here

        monkeypatch.setattr(sys, "unraisablehook", prefer_cli._unraisable)
        Finalized()  # deleted at once: its KeyboardInterrupt goes to the hook, not to this frame
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_swallowed_ctrl_c_is_raised_again_at_the_steps_end(monkeypatch):
    """A C extension that checks for signals and clears the error loses the KeyboardInterrupt Python's handler raised
    (CI once saw a run go on to exit 0 after a Ctrl-C). prefer's handler remembers it, and the step's end raises it."""
    from prefer import errors
    from prefer.training.run import StageRun

    monkeypatch.setattr(errors, "_interrupted", False)
    assert StageRun.due(type("Run", (), {"total": 10})(), 3, every=2) is False  # no Ctrl-C: the plain answer
    try:
        errors.note_interrupt(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass  # swallowed, as the extension would
    with pytest.raises(KeyboardInterrupt):
        StageRun.due(type("Run", (), {"total": 10})(), 3, every=2)
