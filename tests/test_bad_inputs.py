"""A corpus of malformed inputs across every command: each must end with exit code 2 and exactly one stderr line
`prefer: error: ...` naming the file, line or field at fault; no traceback, no third-party chatter around it.

Most cases run `prefer.cli.main` in this process (fast); the few about noise that only a real process shows
(Hugging Face load reports, deprecation warnings) run the real command. Behaviour that must *succeed* despite a
damaged run (a stale lock, a half-written metrics line, leftover staging directories) is tested at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_overrides

from prefer.cli import main
from prefer.data.formats import Comparison, Demonstration, write_demonstrations, write_rankings
from prefer.data.tokenizer import train_tokenizer
from prefer.models.build import build_model

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    root: Path
    corpus: Path
    cache: Path
    lm: Path  # a tiny HF causal LM + tokenizer, no prefer.json
    lm_pii: Path  # the same with prefer.json {"task": "pii"}
    rm: Path  # a reward model's final/: a sequence classifier of lm with prefer.json {"stage": "reward", ...}
    rm_bare: Path  # the same sequence classifier without prefer.json (only its config says what it is)
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
    from transformers import AutoModelForSequenceClassification

    rm_bare = root / "rm_bare"
    AutoModelForSequenceClassification.from_pretrained(str(lm), num_labels=1).save_pretrained(rm_bare)
    tokenizer.save_pretrained(rm_bare)
    rm = root / "rm"
    shutil.copytree(rm_bare, rm)
    (rm / "prefer.json").write_text(json.dumps({"stage": "reward", "reward_bias": 0.0}))
    write_demonstrations(root / "demos.jsonl", [Demonstration(f"say {c}:", f" {c * 4}") for c in "ABCDEFGH"] * 4)
    write_rankings(root / "rankings.jsonl", [Comparison(f"say {c}:", (f" {c * 4}", " no"), (0, 1)) for c in "ABCDEFGH"])
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"say {c}:"}) + "\n" for c in "ABCD"))
    w = World(
        root,
        Path(pii_corpus),
        root / "cache",
        lm,
        lm_pii,
        rm,
        rm_bare,
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
UNREADABLE: list[Path] = []  # files a case made unreadable (open raises PermissionError, as for a chmod 000 file)


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
        "model.init_from": w.lm,
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


case("ppo-no-init-from")(lambda w, t: (ppo(w, t, **{"model.init_from": "''"}), "model.init_from"))
case("ppo-init-from-not-a-model")(lambda w, t: (ppo(w, t, **{"model.init_from": t}), "model.init_from"))
case("ppo-reference-not-a-model")(lambda w, t: (ppo(w, t, **{"model.reference": t}), "model.reference"))
case("ppo-a-key-of-grpo")(lambda w, t: (ppo(w, t, **{"group.size": 8}), "group.size: read by algorithm=rloo | grpo"))
case("grpo-a-key-of-ppo")(lambda w, t: (grpo(w, t, **{"ppo.vf_coef": 0.5}), "ppo.vf_coef: read by algorithm=ppo"))
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
        "runtime.progress": "false",
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


# --- dpo and grpo
def dpo(w, t, **extra):
    values = {
        "out_dir": t / "dpo",
        "data.rankings": w.rankings,
        "model.init_from": w.lm,
        "train.batch_size": 2,
        "eval.kl_samples": 0,
        "runtime.progress": "false",
        **extra,
    }
    return ["dpo", *(f"{k}={v}" for k, v in values.items())]


def grpo(w, t, **extra):
    values = {
        "out_dir": t / "grpo",
        "model.init_from": w.lm,
        "prompts": w.prompts,
        "reward.scorer": "pii",
        "train.iterations": 1,
        "train.batch_size": 2,
        "train.minibatch_size": 4,
        "group.size": 2,
        "rollout.max_new_tokens": 4,
        "runtime.progress": "false",
        **extra,
    }
    return ["grpo", *(f"{k}={v}" for k, v in values.items())]


case("dpo-rankings-missing")(lambda w, t: (dpo(w, t, **{"data.rankings": t / "r.jsonl"}), "r.jsonl"))
case("grpo-prompts-bad")(lambda w, t: (grpo(w, t, prompts=write(t / "p.jsonl", "not json\n")), "p.jsonl:1"))


# --- class: numbers that are not finite (a range check such as lr > 0 lets inf through: a run of NaN weights)
NON_FINITE = {
    "pretrain-lr-inf": lambda w, t: (["pretrain", *w.base(t / "r", **{"optimizer.lr": "inf"})], "optimizer.lr"),
    "pretrain-lr-nan": lambda w, t: (["pretrain", *w.base(t / "r", **{"optimizer.lr": "nan"})], "optimizer.lr"),
    "pretrain-lr-minus-inf": lambda w, t: (["pretrain", *w.base(t / "r", **{"optimizer.lr": "-inf"})], "optimizer.lr"),
    "pretrain-weight-decay-inf": lambda w, t: (
        ["pretrain", *w.base(t / "r", **{"optimizer.weight_decay": "inf"})],
        "optimizer.weight_decay",
    ),
    "pretrain-grad-clip-inf": lambda w, t: (
        ["pretrain", *w.base(t / "r", **{"optimizer.grad_clip": "inf"})],
        "optimizer.grad_clip",
    ),
    "pretrain-ul-alpha-inf": lambda w, t: (
        ["pretrain", *w.base(t / "r", **{"objective.name": "ul", "objective.ul_alpha": "inf"})],
        "objective.ul_alpha",
    ),
    "pretrain-snapshot-nan": lambda w, t: (
        ["pretrain", *w.base(t / "r", **{"train.snapshots": "[0.5,nan]"})],
        "train.snapshots",
    ),
    "pretrain-config-file-lr-inf": lambda w, t: (
        [
            "pretrain",
            "--config",
            write(t / "c.yaml", "optimizer: {lr: .inf}\n"),
            *(o for o in w.base(t / "r") if not o.startswith("optimizer.lr")),
        ],
        "optimizer.lr",
    ),
    "sft-lr-inf": lambda w, t: (sft(w, t, **{"optimizer.lr": "inf"}), "optimizer.lr"),
    "sft-epochs-inf": lambda w, t: (sft(w, t, **{"train.epochs": "inf"}), "train.epochs"),
    "sft-lora-alpha-inf": lambda w, t: (sft(w, t, **{"lora.r": 2, "lora.alpha": "inf"}), "lora.alpha"),
    "reward-lr-inf": lambda w, t: (rm(w, t, **{"optimizer.lr": "inf"}), "optimizer.lr"),
    "reward-warmup-nan": lambda w, t: (rm(w, t, **{"schedule.warmup_fraction": "nan"}), "schedule.warmup_fraction"),
    "ppo-lr-inf": lambda w, t: (ppo(w, t, **{"optimizer.lr": "inf"}), "optimizer.lr"),
    "ppo-kl-coef-inf": lambda w, t: (ppo(w, t, **{"kl.coef": "inf"}), "kl.coef"),
    "ppo-vf-coef-inf": lambda w, t: (ppo(w, t, **{"ppo.vf_coef": "inf"}), "ppo.vf_coef"),
    "ppo-rollout-temperature-inf": lambda w, t: (ppo(w, t, **{"rollout.temperature": "inf"}), "rollout.temperature"),
    "ppo-missing-eos-penalty-inf": lambda w, t: (
        ppo(w, t, **{"reward.missing_eos_penalty": "inf"}),
        "reward.missing_eos_penalty",
    ),
    "dpo-lr-inf": lambda w, t: (dpo(w, t, **{"optimizer.lr": "inf"}), "optimizer.lr"),
    "dpo-beta-inf": lambda w, t: (dpo(w, t, **{"dpo.beta": "inf"}), "dpo.beta"),
    "grpo-lr-inf": lambda w, t: (grpo(w, t, **{"optimizer.lr": "inf"}), "optimizer.lr"),
    "grpo-kl-coef-inf": lambda w, t: (grpo(w, t, **{"kl.coef": "inf"}), "kl.coef"),
    "grpo-clip-range-inf": lambda w, t: (grpo(w, t, **{"group.clip_range": "inf"}), "group.clip_range"),
    "evaluate-temperature-inf": lambda w, t: (
        ["evaluate", w.lm_pii, "sampling.temperature=inf", "sampling.num_samples=2", "sampling.max_new_tokens=2"],
        "sampling.temperature",
    ),
    "label-temperature-inf": lambda w, t: (
        label(w, t, "--synthetic", **{"generation.temperature": "inf", "generation.max_new_tokens": 2}),
        "generation.temperature",
    ),
    "redteam-search-temperature-inf": lambda w, t: (
        redteam(w, t, **{"search.temperature": "inf"}),
        "search.temperature",
    ),
    "sample-temperature-inf": lambda w, t: (
        ["sample", w.lm, "--temperature", "inf", "-n", "1", "--max-new-tokens", "2"],
        "--temperature",
    ),
}
for _name, _case in NON_FINITE.items():
    case(f"nonfinite-{_name}")(_case)

# --- class: LoRA rank larger than the model's width (64): refused before training, not a run of huge adapters
case("lora-rank-sft")(lambda w, t: (sft(w, t, **{"lora.r": 65}), "lora.r"))
case("lora-rank-reward")(lambda w, t: (rm(w, t, **{"lora.r": 65}), "lora.r"))
case("lora-rank-ppo")(lambda w, t: (ppo(w, t, **{"lora.r": 65}), "lora.r"))
case("lora-rank-dpo")(lambda w, t: (dpo(w, t, **{"lora.r": 65}), "lora.r"))
case("lora-rank-grpo")(lambda w, t: (grpo(w, t, **{"lora.r": 65}), "lora.r"))

# --- class: a reward model's directory where a language model is meant
case("kind-sft-init-from-rm")(lambda w, t: (sft(w, t, **{"model.init_from": w.rm}), "reward model"))
case("kind-sft-init-from-bare-rm")(lambda w, t: (sft(w, t, **{"model.init_from": w.rm_bare}), "reward model"))
case("kind-dpo-init-from-rm")(lambda w, t: (dpo(w, t, **{"model.init_from": w.rm}), "reward model"))
case("kind-dpo-reference-rm")(lambda w, t: (dpo(w, t, **{"model.reference": w.rm}), "reward model"))
case("kind-grpo-init-from-rm")(lambda w, t: (grpo(w, t, **{"model.init_from": w.rm}), "reward model"))
case("kind-ppo-init-from-rm")(lambda w, t: (ppo(w, t, **{"model.init_from": w.rm}), "reward model"))
case("kind-ppo-reference-rm")(lambda w, t: (ppo(w, t, **{"model.reference": w.rm}), "reward model"))
case("kind-pretrain-init-from-rm")(
    lambda w, t: (["pretrain", *w.base(t / "r"), f"model.init_from={w.rm}"], "reward model")
)
case("kind-sample-rm")(lambda w, t: (["sample", w.rm, "-n", "1", "--max-new-tokens", "2"], "reward model"))
case("kind-sample-bare-rm")(lambda w, t: (["sample", w.rm_bare, "-n", "1", "--max-new-tokens", "2"], "reward model"))
case("kind-label-model-rm")(
    lambda w, t: (label(w, t, "--synthetic", model=w.rm, **{"generation.max_new_tokens": 2}), "reward model")
)
case("kind-fluency-judge-rm")(lambda w, t: (ppo(w, t, **{"reward.scorer": f"pii+0.001*nll:{w.rm}"}), "reward model"))


# --- class: every OSError while reading user data is one line naming the file (a chmod 000 file as a non-root user:
# open raises PermissionError; simulated, since the suite may run as root; /proc/self/mem: a real read error, EIO)
def unreadable(path: Path) -> Path:
    UNREADABLE.append(path)
    return path


case("unreadable-sft-demonstrations")(
    lambda w, t: (sft(w, t, **{"data.demonstrations": unreadable(w.demos)}), "demos.jsonl")
)
case("unreadable-reward-rankings")(
    lambda w, t: (rm(w, t, **{"data.rankings": unreadable(w.rankings)}), "rankings.jsonl")
)
case("unreadable-dpo-rankings")(lambda w, t: (dpo(w, t, **{"data.rankings": unreadable(w.rankings)}), "rankings.jsonl"))
case("unreadable-ppo-prompts")(lambda w, t: (ppo(w, t, prompts=unreadable(w.prompts)), "prompts.jsonl"))
case("unreadable-grpo-prompts")(lambda w, t: (grpo(w, t, prompts=unreadable(w.prompts)), "prompts.jsonl"))
case("unreadable-label-prompts")(lambda w, t: (label(w, t, "--synthetic", prompts=unreadable(w.prompts)), "prompts"))
case("unreadable-convert-rankings")(
    lambda w, t: (["convert", unreadable(w.rankings), "-o", t / "pairs.jsonl"], "rankings.jsonl")
)
case("unreadable-pretrain-source")(
    lambda w, t: (
        ["pretrain", *w.base(t / "r", **{"data.source": unreadable(write(t / "c.jsonl", '{"text": "a"}\n'))})],
        "c.jsonl",
    )
)
case("unreadable-config")(
    lambda w, t: (["sft", "--config", unreadable(write(t / "c.yaml", "train: {epochs: 1}\n"))], "c.yaml")
)
case("read-error-sft-demonstrations")(
    lambda w, t: (sft(w, t, **{"data.demonstrations": "/proc/self/mem"}), "/proc/self/mem")
)
case("read-error-convert")(lambda w, t: (["convert", "/proc/self/mem", "-o", t / "pairs.jsonl"], "/proc/self/mem"))

# --- class: serve and export check their arguments first (here with the serve extra installed; without it below)
case("serve-workers-zero")(lambda w, t: (["serve", "--db", t / "l.db", "--workers", "0"], "--workers"))
case("serve-db-backend")(lambda w, t: (["serve", "--db", "mysql://u@h/db"], "--db"))
case("serve-db-in-memory")(lambda w, t: (["serve", "--db", "sqlite://"], "--db"))
case("serve-db-is-directory")(lambda w, t: (["serve", "--db", t], "--db"))
case("serve-db-directory-missing")(lambda w, t: (["serve", "--db", t / "none" / "l.db"], "--db"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name, world, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # defaults (runs/..., .cache/...) land in the test's own directory
    monkeypatch.delenv("PREFER_TEST_UNSET_KEY", raising=False)
    t = tmp_path / "t"
    t.mkdir()
    argv, expected = CASES[name](world, t)
    if UNREADABLE:
        forbid_reading([UNREADABLE.pop() for _ in list(UNREADABLE)], monkeypatch)
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


def forbid_reading(paths: list[Path], monkeypatch) -> None:
    """Opening any of `paths` raises PermissionError, as for a chmod 000 file read by a user other than root."""
    import builtins
    import io

    forbidden = {os.path.realpath(p) for p in paths}
    real_open = io.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in forbidden:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(builtins, "open", guarded_open)


# ---------------------------------------------------------------- noise only a real process shows


def run_cli(*argv, cwd, env=None, prefix=("-m", "prefer")) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("PREFER_TEST_UNSET_KEY", None)
    return subprocess.run(
        [sys.executable, *prefix, *map(str, argv)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
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


# ---------------------------------------------------------------- the hub only when asked, one line on failure

# An endpoint that refuses connections stands for an unreachable hub (nothing leaves the machine); not offline, so
# the hub is asked. huggingface_hub's own retries would take 1+2+4+8+8 = 23 s and print 11 lines first.
HUB_ENV = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
HUB = {
    "sft-demonstrations": lambda w, t: sft(w, t, **{"data.demonstrations": "hf:nobody/nothing-here"}),
    "pretrain-source": lambda w, t: ["pretrain", *w.base(t / "r", **{"data.source": "hf:nobody/nothing-here"})],
}


@pytest.mark.parametrize("name", sorted(HUB))
def test_unreachable_hub_is_one_line_at_once(name, world, tmp_path):
    t = tmp_path / "t"
    t.mkdir()

    def timed_run(**env):
        started = time.monotonic()
        result = run_cli(*HUB[name](world, t), cwd=tmp_path, env={**HUB_ENV, "HF_HOME": str(tmp_path / "hf"), **env})
        return result, time.monotonic() - started

    result, elapsed = timed_run()
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("prefer: error: "), result.stderr
    assert "hf:nobody/nothing-here" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    # No retries: they alone take 23 s. The baseline is the same command offline (no connection tried), run now on
    # the same machine, so that a loaded machine's slower start of Python and torch is in both.
    offline, baseline = timed_run(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert offline.returncode == 2, offline.stderr
    assert elapsed < baseline + 15, (elapsed, baseline)


# ---------------------------------------------------------------- serve and export without the serve extra

# The base install has none of the serve extra: a process in which importing its packages fails as if absent.
BLOCK_SERVE_EXTRA = (
    "import sys\n"
    "for name in ('fastapi', 'uvicorn', 'starlette', 'sqlalchemy', 'alembic', 'argon2', 'jinja2', 'psycopg'):\n"
    "    sys.modules[name] = None  # import raises ModuleNotFoundError\n"
    "from prefer.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
INSTALL = "pip install 'prefer[serve]'"
NO_EXTRA = {
    "serve": (lambda t: ["serve", "--db", t / "l.db"], INSTALL),
    "serve-defaults": (lambda t: ["serve"], INSTALL),
    "serve-workers-zero": (lambda t: ["serve", "--workers", "0"], "--workers"),
    "serve-bad-port": (lambda t: ["serve", "--port", "0"], "--port"),
    "serve-db-backend": (lambda t: ["serve", "--db", "mysql://u@h/db"], "--db"),
    "serve-db-in-memory": (lambda t: ["serve", "--db", "sqlite://"], "--db"),
    "serve-db-is-directory": (lambda t: ["serve", "--db", t], "--db"),
    "export": (lambda t: ["export", "--db", write(t / "l.db", b""), "--project", "p", "--out", t / "o"], INSTALL),
    "export-missing-db": (lambda t: ["export", "--db", t / "none.db", "--project", "p", "--out", t / "o"], "none.db"),
    "export-db-backend": (lambda t: ["export", "--db", "mysql://u@h/db", "--project", "p", "--out", t / "o"], "--db"),
}


@pytest.mark.parametrize("name", sorted(NO_EXTRA))
def test_labeling_app_without_the_serve_extra(name, tmp_path):
    argv, expected = NO_EXTRA[name]
    result = run_cli(*argv(tmp_path), cwd=tmp_path, prefix=("-c", BLOCK_SERVE_EXTRA))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("prefer: error: "), result.stderr
    assert expected in result.stderr


# ---------------------------------------------------------------- every float key of every config must be finite


def _float_keys(cls, prefix=""):
    import typing
    from dataclasses import fields, is_dataclass

    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        kind = hints[item.name]
        if is_dataclass(kind):
            yield from _float_keys(kind, f"{prefix}{item.name}.")
        elif kind in (float, float | None):
            yield f"{prefix}{item.name}"


def _sweep():
    from prefer.config import STAGE_CONFIGS

    return [(command, key) for command, cls in sorted(STAGE_CONFIGS.items()) for key in _float_keys(cls)]


SWEEP = _sweep()


def test_the_sweep_covers_every_stage():
    assert len(SWEEP) > 200 and {command for command, _ in SWEEP} >= {"pretrain", "sft", "ppo", "dpo", "grpo", "rlhf"}


@pytest.mark.parametrize(("command", "key"), SWEEP, ids=[f"{c}:{k}" for c, k in SWEEP])
def test_every_float_key_must_be_finite(command, key):
    """inf, -inf and nan in any float key of any command's config: one error naming the key, before anything runs
    (no range check alone refuses all three: `lr > 0` lets inf through, `x >= 0` lets inf through too)."""
    from prefer.config import STAGE_CONFIGS, load_config
    from prefer.errors import PreferError

    for value in ("inf", "-inf", "nan"):
        with pytest.raises(PreferError, match=f"config: {re.escape(key)}: {value} is not a finite number"):
            load_config(STAGE_CONFIGS[command], overrides=[f"{key}={value}"])


def test_python_api_configs_refuse_non_finite_numbers():
    from prefer.config import KLConfig, OptimizerConfig, SamplingConfig
    from prefer.errors import PreferError

    with pytest.raises(PreferError, match="optimizer.lr: inf"):
        OptimizerConfig(lr=float("inf"))
    with pytest.raises(PreferError, match="kl.coef: inf"):
        KLConfig(coef=float("inf"))
    with pytest.raises(PreferError, match="sampling.temperature: nan"):
        SamplingConfig(temperature=float("nan"))


# ---------------------------------------------------------------- a diverging run stops; metrics stay JSON


def test_a_non_finite_step_stops_the_run_and_keeps_the_last_checkpoint(world, tmp_path, capfd):
    """lr 1e30 (finite, so accepted) makes the first step's weights ~1e30: the next forward pass overflows and the
    gradient norm is NaN. The run stops there with one line naming the step and optimizer.lr; the checkpoint of
    step 1 (checkpoint_every=1) is the one left, and metrics.jsonl is strict JSON."""
    run = tmp_path / "sft"
    argv = sft(world, tmp_path, out_dir=run, **{"optimizer.lr": 1e30, "train.checkpoint_every": 1, "train.epochs": 2})
    capfd.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prefer: error: training diverged at optimizer step "), err
    assert "optimizer.lr" in err
    step = int(err.split("optimizer step ")[1].split(":")[0])
    assert step >= 2
    assert latest(run).name == f"step_{step - 1:08d}"  # the last step that finished
    assert not (run / "final").exists()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))


def test_metrics_log_writes_null_for_non_finite_values(tmp_path):
    from prefer.run_dir import read_metrics
    from prefer.training.metrics import MetricsLog

    log = MetricsLog(tmp_path)
    log.log(1, {"loss": float("nan"), "kl": float("inf"), "ok": 1.5})
    log.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 1, "loss": None, "kl": None, "ok": 1.5} and "NaN" not in line
    assert read_metrics(tmp_path) == [{"step": 1, "loss": None, "kl": None, "ok": 1.5}]


def test_optimizer_step_refuses_a_non_finite_gradient_before_touching_the_weights():
    from prefer.errors import PreferError
    from prefer.training.optimization import make_optimizer, make_scheduler, optimizer_step

    layer = torch.nn.Linear(2, 1)
    optimizer = make_optimizer([layer], lr=0.1, weight_decay=0.0, betas=(0.9, 0.95))
    scheduler = make_scheduler(optimizer, total_steps=10, warmup_steps=1, min_lr_fraction=0.1)
    layer(torch.ones(1, 2)).sum().backward()
    assert optimizer_step([layer], optimizer, scheduler, grad_clip=1.0) > 0  # step 1: finite
    before = [p.detach().clone() for p in layer.parameters()]
    (layer(torch.ones(1, 2)) * float("nan")).sum().backward()
    with pytest.raises(PreferError, match=r"optimizer step 2: the gradient norm is nan .*optimizer\.lr"):
        optimizer_step([layer], optimizer, scheduler, grad_clip=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


# ---------------------------------------------------------------- output files: the mode a plain write gives


def test_final_and_checkpoint_files_are_readable_by_group_and_others(world, tmp_path):
    """Under umask 022 every file a run writes is 0644 and every directory 0755: safetensors writes its file 0600
    (a private temporary file renamed), which atomic_path used to keep, so a colleague could not read the weights."""
    run = tmp_path / "sft"
    previous = os.umask(0o022)
    try:
        assert main([str(a) for a in sft(world, tmp_path, out_dir=run, **{"train.checkpoint_every": 1})]) == 0
    finally:
        os.umask(previous)
    written = [p for p in [*(run / "final").rglob("*"), *(run / "checkpoints").rglob("*")] if not p.is_symlink()]
    assert any(p.name == "model.safetensors" for p in written)
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in written}
    assert all(mode == ("0o755" if (run / path).is_dir() else "0o644") for path, mode in modes.items()), modes


def test_atomic_path_follows_the_umask(tmp_path):
    from safetensors.torch import save_file

    from prefer.files import atomic_path

    previous = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "model") as tmp:
            tmp.mkdir()
            save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")  # 0600 as safetensors writes it
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    assert oct((tmp_path / "model").stat().st_mode & 0o777) == "0o750"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "model").iterdir()} == {
        "model.safetensors": "0o640",
        "config.json": "0o640",
    }


# ---------------------------------------------------------------- Ctrl-C: one line, and how to resume


@pytest.mark.parametrize("command", ["pretrain", "sft", "reward", "ppo", "dpo", "grpo"])
def test_ctrl_c_names_the_resume_command_of_every_training_stage(command, monkeypatch, capfd):
    from prefer import cli as prefer_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(prefer_cli.COMMANDS, command, interrupted)
    capfd.readouterr()
    assert main([command, "out_dir=runs/my run", "optimizer.lr=1e-4"]) == 130
    err = capfd.readouterr().err
    assert (
        err == f"prefer: interrupted; resume with: prefer {command} 'out_dir=runs/my run' optimizer.lr=1e-4 --resume\n"
    )
    assert main([command, "--resume", "out_dir=x"]) == 130  # already resuming: --resume is not added twice
    assert capfd.readouterr().err == f"prefer: interrupted; resume with: prefer {command} --resume out_dir=x\n"


@pytest.mark.parametrize("command", ["rlhf", "experiment"])
def test_ctrl_c_of_a_pipeline_says_the_same_command_continues(command, monkeypatch, capfd):
    from prefer import cli as prefer_cli

    monkeypatch.setitem(prefer_cli.COMMANDS, command, lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    capfd.readouterr()
    assert main([command, "out_dir=x"]) == 130
    assert (
        capfd.readouterr().err
        == f"prefer: interrupted; run the same command again to continue: prefer {command} out_dir=x\n"
    )
