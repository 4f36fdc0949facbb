"""Shared helpers of the pretraining and experiment tests: a small synthetic PII corpus whose bad lines are easy to
learn (the `pii_corpus` fixture of conftest.py writes it), and the overrides of a tiny pretraining run."""

import json
import random

GOOD_LINES = [
    "  * Fix the build with the new compiler.\n",
    "  * Update the package to the new upstream release.\n",
    "  * Add a patch for the manual page.\n",
    "  * Bump the standards version, no changes needed.\n",
]
BAD_LINES = [
    " -- Alice Smith <alice@example.org>  Mon, 01 Jan 2024 10:00:00 +0000\n",
    " -- Bob Jones <bob.jones@example.net>  Tue, 02 Jan 2024 11:00:00 +0000\n",
]


def write_pii_corpus(path, *, documents=400, seed=0):
    """Changelog-like entries: a header, three change lines, and a maintainer trailer with an email."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(documents):
            lines = [f"pkg{i % 7} (1.{i}-1) unstable; urgency=medium\n", "\n"]
            lines += [rng.choice(GOOD_LINES) for _ in range(3)] + ["\n", rng.choice(BAD_LINES)]
            handle.write(json.dumps({"text": "".join(lines)}) + "\n")
    return path


def tiny_overrides(out_dir, corpus, cache_dir, **extra):
    values = {
        "out_dir": out_dir,
        "data.task": "pii",
        "data.source": corpus,
        "data.cache_dir": cache_dir,
        "data.workers": 1,
        "data.validation_fraction": 0.1,
        "data.max_bytes": "null",
        "model.size": "tiny",
        "model.vocab_size": 400,
        "model.context": 64,
        "train.tokens": 40_000,
        "train.batch_size": 16,
        "optimizer.lr": 3e-3,
        "train.eval_every": 10,
        "train.checkpoint_every": 10,
        "runtime.progress": "false",
        "schedule.warmup_fraction": 0.05,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def computed(record: dict) -> dict:
    """A metrics record without its wall-clock keys (`time/...`): what two runs that compute the same must share."""
    return {key: value for key, value in record.items() if not key.startswith("time/")}
