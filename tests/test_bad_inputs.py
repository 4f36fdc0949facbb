"""A corpus of malformed inputs across every command: each must end with exit code 2 and exactly one stderr line
`prefer: error: ...` naming the file, line or field at fault; no traceback, no third-party chatter around it.

Most cases run `prefer.cli.main` in this process (fast); the few about noise that only a real process shows
(Hugging Face load reports, deprecation warnings) run the real command. Behaviour that must *succeed* despite a
damaged run (a stale lock, a half-written metrics line, leftover staging directories) is tested at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from prefer.cli import main
from prefer.data.formats import Comparison, Demonstration, write_demonstrations, write_rankings
from prefer.models.build import build_model, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    root: Path
    corpus: Path
    cache: Path
    lm: Path  # a tiny HF causal LM + tokenizer, no prefer.json
    lm_pii: Path  # the same with prefer.json {"task": "pii"}
    demos: Path
    rankings: Path
    prompts: Path
    run: Path  # a finished tiny pretrain run (config.yaml, checkpoints/, final/)

    def base(self, out_dir, **extra) -> list[str]:
        """Overrides of a tiny pretrain run into out_dir."""
        return tiny_overrides(str(out_dir), str(self.corpus), str(self.cache), **{"train.tokens": 4_000, **extra})


@pytest.fixture(scope="module")
def world(tmp_path_factory, pii_corpus, one_thread) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    texts = [f"say {c}: {c * 4}" for c in "ABCDEFGH"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    lm = root / "lm"
    model.save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    lm_pii = root / "lm_pii"
    shutil.copytree(lm, lm_pii)
    (lm_pii / "prefer.json").write_text(json.dumps({"task": "pii"}))
    write_demonstrations(root / "demos.jsonl", [Demonstration(f"say {c}:", f" {c * 4}") for c in "ABCDEFGH"] * 4)
    write_rankings(root / "rankings.jsonl", [Comparison(f"say {c}:", (f" {c * 4}", " no"), (0, 1)) for c in "ABCDEFGH"])
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"say {c}:"}) + "\n" for c in "ABCD"))
    w = World(
        root,
        Path(pii_corpus),
        root / "cache",
        lm,
        lm_pii,
        root / "demos.jsonl",
        root / "rankings.jsonl",
        root / "prompts.jsonl",
        root / "run",
    )
    assert main(["pretrain", *w.base(w.run)]) == 0
    return w


def copy_run(w: World, t: Path) -> Path:
    run = t / "run"
    shutil.copytree(w.run, run, ignore=shutil.ignore_patterns(".lock"))
    return run


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def holder(directory: Path) -> subprocess.Popen:
    """Another process that owns `directory` (as a live run would) until killed."""
    code = (
        "import sys; from prefer.run_dir import claim_run_dir; claim_run_dir(sys.argv[1]); print('held', "
        "flush=True); sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout.readline().strip() == "held"
    return process


# ---------------------------------------------------------------- the corpus: name -> (world, tmp) -> argv, expected

CASES = {}
HOLDERS: list[subprocess.Popen] = []  # processes a case started, killed when it ends


def case(name):
    def register(function):
        CASES[name] = function
        return function

    return register


# --- the command line and config files (every command reads them the same way)
case("no-command")(lambda w, t: ([], "command"))
case("unknown-command")(lambda w, t: (["train"], "train"))
case("unknown-flag")(lambda w, t: (["pretrain", "--bogus"], "--bogus"))
case("sample-n-not-a-number")(lambda w, t: (["sample", str(w.lm), "-n", "abc"], "-n"))
case("experiment-unknown-task")(lambda w, t: (["experiment", "--task", "poetry"], "--task"))
case("config-missing")(lambda w, t: (["pretrain", "--config", str(t / "none.yaml")], "none.yaml"))
case("config-bad-yaml")(
    lambda w, t: (["pretrain", "--config", str(write(t / "c.yaml", "train: {lr: [1\n"))], "c.yaml:")
)
case("config-list")(lambda w, t: (["sft", "--config", str(write(t / "c.yaml", "- 1\n- 2\n"))], "c.yaml"))
case("config-scalar-section")(lambda w, t: (["pretrain", "--config", str(write(t / "c.yaml", "train: 5\n"))], "train"))
case("config-binary")(lambda w, t: (["reward", "--config", str(write(t / "c.yaml", b"\xff\xfe\x00\x81"))], "c.yaml"))
case("config-is-directory")(lambda w, t: (["ppo", "--config", str(t)], str(t)))
case("config-unknown-key")(
    lambda w, t: (["pretrain", "--config", str(write(t / "c.yaml", "trian: {lr: 1}\n"))], "trian")
)
case("config-ill-typed")(
    lambda w, t: (["pretrain", "--config", str(write(t / "c.yaml", "optimizer: {lr: fast}\n"))], "optimizer.lr")
)
case("override-without-equals")(lambda w, t: (["pretrain", "lr"], "'lr'"))
case("override-unknown-key")(lambda w, t: (["pretrain", "train.nope=1"], "train.nope"))
case("override-bad-value")(lambda w, t: (["pretrain", "train.batch_size=0"], "train.batch_size"))
case("override-unknown-size")(lambda w, t: (["pretrain", "model.size=huge"], "model.size"))
case("override-unknown-objective")(lambda w, t: (["pretrain", "objective.name=dpo"], "objective.name"))
case("override-micro-batch")(lambda w, t: (["pretrain", "train.micro_batch_size=3"], "train.micro_batch_size"))
case("override-snapshots")(lambda w, t: (["pretrain", "train.snapshots=[2]"], "train.snapshots"))

# --- pretrain: data, directories, init models
case("pretrain-source-missing")(
    lambda w, t: (["pretrain", *w.base(t / "r", **{"data.source": t / "no.jsonl"})], "no.jsonl")
)
case("pretrain-source-empty")(
    lambda w, t: (["pretrain", *w.base(t / "r", **{"data.source": write(t / "e.jsonl", "")})], "e.jsonl")
)
case("pretrain-source-bad-json")(
    lambda w, t: (
        ["pretrain", *w.base(t / "r", **{"data.source": write(t / "b.jsonl", '{"text": "a"}\n{"text": \n')})],
        "b.jsonl",
    )
)
case("pretrain-out-dir-is-file")(lambda w, t: (["pretrain", *w.base(write(t / "f", "x"))], "out_dir"))
case("pretrain-out-dir-under-file")(lambda w, t: (["pretrain", *w.base(write(t / "f", "x") / "run")], "out_dir"))
case("pretrain-init-from-missing")(
    lambda w, t: (["pretrain", *w.base(t / "r"), f"--init-from={t / 'nope'}"], "model.init_from")
)
case("pretrain-init-from-not-a-model")(
    lambda w, t: (["pretrain", *w.base(t / "r"), f"model.init_from={t}"], "model.init_from")
)
case("pretrain-tokenizer-missing")(
    lambda w, t: (["pretrain", *w.base(t / "r", **{"model.tokenizer": t / "tok"})], "model.tokenizer")
)
case("pretrain-existing-run")(lambda w, t: (["pretrain", *w.base(copy_run(w, t))], "--resume"))


@case("pretrain-in-use")
def _(w, t):
    run = t / "busy"
    HOLDERS.append(holder(run))  # the test kills it
    return ["pretrain", *w.base(run)], "in use"


@case("pretrain-started-beside-another-run")
def _(w, t):  # a run with another objective into the directory of a run killed before its first checkpoint
    run = copy_run(w, t)
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "final")
    return ["pretrain", *w.base(run, **{"objective.name": "ul"})], "already holds a run"


# --- --resume refuses what it cannot continue
case("resume-without-saved-config")(lambda w, t: (["pretrain", "--resume", f"out_dir={t / 'never'}"], "config.yaml"))


@case("resume-config-corrupt")
def _(w, t):
    run = copy_run(w, t)
    write(run / "config.yaml", "out_dir: [unclosed\n")
    return ["pretrain", "--resume", f"out_dir={run}"], "config.yaml:"


@case("resume-config-truncated")
def _(w, t):
    run = copy_run(w, t)
    text = (run / "config.yaml").read_text()
    write(run / "config.yaml", text[: len(text) // 2].rsplit("\n", 1)[0] + "\n  lr: [")
    return ["pretrain", "--resume", f"out_dir={run}"], "config.yaml"


@case("resume-trainer-state-truncated")
def _(w, t):
    run = copy_run(w, t)
    state = latest(run) / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    return ["pretrain", "--resume", *w.base(run)], "trainer_state.pt"


@case("resume-trainer-state-garbage")
def _(w, t):
    run = copy_run(w, t)
    write(latest(run) / "trainer_state.pt", b"\x00" * 64)
    return ["pretrain", "--resume", *w.base(run)], "trainer_state.pt"


@case("resume-latest-dangling")
def _(w, t):
    run = copy_run(w, t)
    write(run / "checkpoints" / "latest", "step_99999999\n")
    return ["pretrain", "--resume", *w.base(run)], "latest"


@case("resume-model-weights-corrupt")
def _(w, t):
    run = copy_run(w, t)
    write(latest(run) / "model" / "model.safetensors", b"not safetensors")
    return ["pretrain", "--resume", *w.base(run)], "model"


case("resume-changed-seed")(
    lambda w, t: (["pretrain", "--resume", *w.base(copy_run(w, t), **{"runtime.seed": 1})], "seed")
)
case("resume-changed-batch-size")(
    lambda w, t: (["pretrain", "--resume", *w.base(copy_run(w, t), **{"train.batch_size": 8})], "batch_size")
)
case("resume-changed-lr")(
    lambda w, t: (["pretrain", "--resume", *w.base(copy_run(w, t), **{"optimizer.lr": 1e-3})], "lr")
)
case("resume-changed-budget")(
    lambda w, t: (["pretrain", "--resume", *w.base(copy_run(w, t), **{"train.tokens": 8000})], "tokens")
)
case("resume-changed-objective")(
    lambda w, t: (["pretrain", "--resume", *w.base(copy_run(w, t), **{"objective.name": "ul"})], "objective.name")
)


@case("resume-foreign-vocabulary")
def _(w, t):  # checkpoints of a run with another vocabulary copied into this run
    run = copy_run(w, t)
    model = latest(run) / "model"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(w.lm / name, model / name)
    return ["pretrain", "--resume", *w.base(run)], "tokenizer"


# --- corpus
case("corpus-source-missing")(lambda w, t: (["corpus", f"data.source={t / 'none'}"], "none"))
case("corpus-shard-out-of-range")(
    lambda w, t: (["corpus", "data.num_shards=2", "data.shard_index=2"], "data.shard_index")
)

# --- evaluate and sample
case("evaluate-missing")(lambda w, t: (["evaluate", str(t / "none")], "none"))
case("evaluate-run-dir")(lambda w, t: (["evaluate", str(w.run)], "final"))
case("evaluate-a-file")(lambda w, t: (["evaluate", str(w.demos)], "demos.jsonl"))
case("evaluate-no-task")(lambda w, t: (["evaluate", str(w.lm)], "task"))
case("evaluate-zero-samples")(
    lambda w, t: (["evaluate", str(w.lm_pii), "sampling.num_samples=0"], "sampling.num_samples")
)
case("evaluate-top-p")(lambda w, t: (["evaluate", str(w.lm_pii), "sampling.top_p=2"], "sampling.top_p"))
case("evaluate-out-is-directory")(
    lambda w, t: (
        ["evaluate", str(w.lm_pii), f"out={t}", "sampling.num_samples=2", "sampling.max_new_tokens=2"],
        str(t),
    )
)


@case("evaluate-weights-corrupt")
def _(w, t):
    model = t / "model"
    shutil.copytree(w.lm_pii, model)
    write(model / "model.safetensors", b"\x00" * 16)
    return ["evaluate", str(model)], "model"


case("sample-zero")(lambda w, t: (["sample", str(w.lm), "-n", "0"], "--num-samples"))
case("sample-max-new-tokens")(lambda w, t: (["sample", str(w.lm), "--max-new-tokens", "0"], "--max-new-tokens"))
case("sample-top-p")(lambda w, t: (["sample", str(w.lm), "--top-p", "0"], "--top-p"))
case("sample-temperature")(lambda w, t: (["sample", str(w.lm), "--temperature", "-1"], "--temperature"))
case("sample-missing")(lambda w, t: (["sample", str(t / "none")], "none"))


# --- sft
def sft(w, t, **extra):
    values = {
        "out_dir": t / "sft",
        "data.demonstrations": w.demos,
        "model.init_from": w.lm,
        "runtime.progress": "false",
        "train.batch_size": 4,
        **extra,
    }
    return ["sft", *(f"{k}={v}" for k, v in values.items())]


case("sft-no-demonstrations")(lambda w, t: (sft(w, t, **{"data.demonstrations": "''"}), "data.demonstrations"))
case("sft-demonstrations-missing")(lambda w, t: (sft(w, t, **{"data.demonstrations": t / "d.jsonl"}), "d.jsonl"))
case("sft-demonstrations-bad-json")(
    lambda w, t: (
        sft(w, t, **{"data.demonstrations": write(t / "d.jsonl", '{"prompt": "a", "response": "b"}\n{oops}\n')}),
        "d.jsonl:2",
    )
)
case("sft-demonstrations-missing-field")(
    lambda w, t: (sft(w, t, **{"data.demonstrations": write(t / "d.jsonl", '{"prompt": "a"}\n')}), "d.jsonl:1")
)
case("sft-no-init-from")(lambda w, t: (sft(w, t, **{"model.init_from": "''"}), "model.init_from"))
case("sft-init-from-not-a-model")(lambda w, t: (sft(w, t, **{"model.init_from": t}), "model.init_from"))
case("sft-epochs")(lambda w, t: (sft(w, t, **{"train.epochs": 0}), "train.epochs"))
case("sft-validation-fraction")(lambda w, t: (sft(w, t, **{"data.validation_fraction": 1}), "data.validation_fraction"))
case("sft-out-dir-is-file")(lambda w, t: (sft(w, t, out_dir=write(t / "f", "x")), "out_dir"))


# --- reward
def rm(w, t, **extra):
    values = {
        "out_dir": t / "rm",
        "data.rankings": w.rankings,
        "model.init_from": w.lm,
        "runtime.progress": "false",
        "train.batch_size": 2,
        **extra,
    }
    return ["reward", *(f"{k}={v}" for k, v in values.items())]


case("reward-rankings-missing")(lambda w, t: (rm(w, t, **{"data.rankings": t / "r.jsonl"}), "r.jsonl"))
case("reward-rankings-bad-json")(
    lambda w, t: (rm(w, t, **{"data.rankings": write(t / "r.jsonl", "[1, 2]\n")}), "r.jsonl:1")
)
case("reward-ranking-not-a-permutation")(
    lambda w, t: (
        rm(
            w,
            t,
            **{
                "data.rankings": write(
                    t / "r.jsonl", json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}) + "\n"
                )
            },
        ),
        "r.jsonl:1",
    )
)
case("reward-ranking-one-response")(
    lambda w, t: (
        rm(
            w,
            t,
            **{
                "data.rankings": write(
                    t / "r.jsonl", json.dumps({"prompt": "p", "responses": ["a"], "ranking": [0]}) + "\n"
                )
            },
        ),
        "r.jsonl:1",
    )
)
case("reward-demonstrations-bad")(
    lambda w, t: (rm(w, t, **{"data.demonstrations": write(t / "d.jsonl", "{}\n")}), "d.jsonl:1")
)
case("reward-no-init-from")(lambda w, t: (rm(w, t, **{"model.init_from": "''"}), "model.init_from"))
case("reward-init-from-missing")(lambda w, t: (rm(w, t, **{"model.init_from": t / "none"}), "none"))


# --- label
def label(w, t, *flags, **extra):
    values = {
        "model": w.lm,
        "prompts": w.prompts,
        "rankings_out": t / "r.jsonl",
        "demonstrations_out": t / "d.jsonl",
        **extra,
    }
    return ["label", *flags, *(f"{k}={v}" for k, v in values.items())]


case("label-not-synthetic")(lambda w, t: (label(w, t), "--synthetic"))
case("label-prompts-missing")(lambda w, t: (label(w, t, "--synthetic", prompts=t / "p.jsonl"), "p.jsonl"))
case("label-prompts-bad")(
    lambda w, t: (label(w, t, "--synthetic", prompts=write(t / "p.jsonl", '{"q": 1}\n')), "p.jsonl:1")
)
case("label-num-responses")(lambda w, t: (label(w, t, "--synthetic", num_responses=1), "num_responses"))
case("label-model-missing")(lambda w, t: (label(w, t, "--synthetic", model=t / "none"), "none"))
case("label-unknown-scorer")(lambda w, t: (label(w, t, "--synthetic", scorer="vibes"), "vibes"))

# --- report
case("report-missing")(lambda w, t: (["report", str(t / "none"), "-o", str(t / "r.html")], "none"))
case("report-nothing-to-report")(lambda w, t: (["report", str(t), "-o", str(t / "r.html")], str(t)))
case("report-out-is-directory")(lambda w, t: (["report", str(w.run), "-o", str(t)], str(t)))


# --- ppo
def ppo(w, t, **extra):
    values = {
        "out_dir": t / "ppo",
        "init_from": w.lm,
        "prompts": w.prompts,
        "reward.scorer": "pii",
        "train.iterations": 1,
        "train.batch_size": 4,
        "train.minibatch_size": 2,
        "rollout.max_new_tokens": 4,
        "runtime.progress": "false",
        **extra,
    }
    return ["ppo", *(f"{k}={v}" for k, v in values.items())]


case("ppo-no-init-from")(lambda w, t: (ppo(w, t, init_from="''"), "init_from"))
case("ppo-init-from-not-a-model")(lambda w, t: (ppo(w, t, init_from=t), "init_from"))
case("ppo-prompts-missing")(lambda w, t: (ppo(w, t, prompts=t / "p.jsonl"), "p.jsonl"))
case("ppo-prompts-bad")(lambda w, t: (ppo(w, t, prompts=write(t / "p.jsonl", "not json\n")), "p.jsonl:1"))
case("ppo-no-scorer")(lambda w, t: (ppo(w, t, **{"reward.scorer": "null"}), "reward.scorer"))
case("ppo-unknown-scorer")(lambda w, t: (ppo(w, t, **{"reward.scorer": "vibes"}), "vibes"))
case("ppo-minibatch")(lambda w, t: (ppo(w, t, **{"train.minibatch_size": 3}), "train.minibatch_size"))
case("ppo-ptx-without-source")(lambda w, t: (ppo(w, t, **{"ptx.coef": 1.0}), "ptx.source"))
case("ppo-reward-model-missing")(lambda w, t: (ppo(w, t, **{"reward.scorer": "null", "reward.model": t / "rm"}), "rm"))


# --- redteam
def redteam(w, t, **extra):
    values = {
        "out_dir": t / "rt",
        "target": w.lm_pii,
        "redteam_model": w.lm,
        "search.rounds": 1,
        "search.trials": 1,
        "search.candidates_per_round": 2,
        "continuations.count": 2,
        "continuations.max_new_tokens": 4,
        "candidates.max_new_tokens": 4,
        "progress": "false",
        **extra,
    }
    return ["redteam", *(f"{k}={v}" for k, v in values.items())]


case("redteam-no-target")(lambda w, t: (redteam(w, t, target="''"), "target"))
case("redteam-target-missing")(lambda w, t: (redteam(w, t, target=t / "none"), "none"))
case("redteam-two-red-teams")(
    lambda w, t: (redteam(w, t, **{"endpoint.url": "http://127.0.0.1:9/v1", "endpoint.model": "m"}), "redteam_model")
)
case("redteam-seeds-missing")(lambda w, t: (redteam(w, t, seeds=t / "s.txt"), "s.txt"))
case("redteam-api-key-unset")(
    lambda w, t: (
        redteam(
            w,
            t,
            redteam_model="null",
            **{
                "endpoint.url": "http://127.0.0.1:9/v1",
                "endpoint.model": "m",
                "endpoint.api_key_env": "PREFER_TEST_UNSET_KEY",
            },
        ),
        "PREFER_TEST_UNSET_KEY",
    )
)
case("redteam-bad-url")(
    lambda w, t: (redteam(w, t, redteam_model="null", **{"endpoint.url": "ftp://x", "endpoint.model": "m"}), "endpoint")
)

# --- experiment and demo
case("experiment-unknown-objective")(lambda w, t: (["experiment", "--objectives", "mle,dpo"], "dpo"))
case("experiment-finetune-from")(lambda w, t: (["experiment", "finetune_from=2"], "finetune_from"))
case("experiment-out-dir-is-file")(
    lambda w, t: (
        [
            "experiment",
            f"out_dir={write(t / 'f', 'x')}",
            "objectives=[mle]",
            f"pretrain.data.source={w.corpus}",
            f"pretrain.data.cache_dir={w.cache}",
        ],
        str(t / "f"),
    )
)
case("demo-bad-override")(lambda w, t: (["demo", "pretrain.optimizer.lr=-1"], "optimizer.lr"))


# --- the labeling app: serve and export
case("export-missing-db")(
    lambda w, t: (["export", "--db", t / "none.db", "--project", "p", "--out", t / "o"], "none.db")
)
case("export-no-project")(lambda w, t: (["export", "--out", t / "o"], "--project"))
case("serve-port-out-of-range")(lambda w, t: (["serve", "--db", t / "l.db", "--port", "99999"], "--port"))
case("serve-port-not-a-number")(lambda w, t: (["serve", "--port", "abc"], "--port"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name, world, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # defaults (runs/..., .cache/...) land in the test's own directory
    monkeypatch.delenv("PREFER_TEST_UNSET_KEY", raising=False)
    t = tmp_path / "t"
    t.mkdir()
    argv, expected = CASES[name](world, t)
    capfd.readouterr()
    try:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    finally:
        while HOLDERS:
            process = HOLDERS.pop()
            process.kill()
            process.wait()
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("prefer: error: "), err
    assert expected in lines[0]


# ---------------------------------------------------------------- noise only a real process shows


def run_cli(*argv, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PREFER_TEST_UNSET_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "prefer", *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


NOISY = {
    # the reward model (a fresh score head) is loaded after the data is read, and its load report never shows
    "reward-bad-rankings": lambda w, t: (rm(w, t, **{"data.rankings": write(t / "r.jsonl", "{}\n")}), "r.jsonl:1"),
    # the run, not its final/: no tokenizer backend error
    "evaluate-run-dir": lambda w, t: (["evaluate", w.run], "final"),
    # an endpoint that refuses connections: no deprecation warnings before the line
    "redteam-refused": lambda w, t: (
        redteam(w, t, redteam_model="null", **{"endpoint.url": "http://127.0.0.1:9/v1", "endpoint.model": "m"}),
        "127.0.0.1:9",
    ),
}


@pytest.mark.parametrize("name", sorted(NOISY))
def test_real_command_prints_only_the_error_line(name, world, tmp_path):
    t = tmp_path / "t"
    t.mkdir()
    argv, expected = NOISY[name](world, t)
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("prefer: error: "), result.stderr
    assert expected in result.stderr and result.stdout == ""
