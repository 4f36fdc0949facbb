"""Shared fixtures: a small synthetic PII corpus whose bad lines are easy to learn, and tiny-run overrides."""

import json
import os
import random

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` (the default, pyproject.toml): N workers already share the cores, so one thread each, in this
    # process and in the commands its tests start; N x cores OpenMP threads spinning against each other made the
    # experiments test's setup 5x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

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


@pytest.fixture(scope="session")
def pii_corpus(tmp_path_factory):
    return write_pii_corpus(tmp_path_factory.mktemp("corpus") / "changelogs.jsonl")


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose 10x or more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- tiers: `pytest -m unit` is the fast tier
TIERS = ("unit", "stage", "system", "browser", "load", "real")
_TIER_BY_PATH = [  # first match wins; a test's own tier mark wins over its folder's
    ("tests/real/", "real"),
    ("tests/labeling/app/test_browser.py", "browser"),
    ("tests/labeling/app/test_load.py", "load"),
    ("tests/test_rlhf.py", "system"),
    ("tests/test_experiments.py", "system"),
    ("tests/stages/", "stage"),
    ("tests/test_bad_inputs.py", "stage"),  # whole commands, many in real processes
    ("tests/labeling/app/", "stage"),  # the running app against a database
    ("tests/training/test_trackers.py", "stage"),
    ("tests/scorers/test_user_scorers.py", "stage"),  # plugins installed, real processes
    ("tests/models/", "stage"),
    ("tests/test_training.py", "stage"),
    ("tests/test_run_dir.py", "stage"),
    ("tests/test_bench_gpu.py", "stage"),
    ("tests/evaluation/test_redteam.py", "stage"),
    ("tests/labeling/test_synthetic.py", "stage"),
    ("tests/", "unit"),
]


def pytest_collection_modifyitems(config, items):
    root = str(config.rootpath) + "/"
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        path = str(item.path).removeprefix(root)
        tier = next(tier for prefix, tier in _TIER_BY_PATH if path.startswith(prefix))
        item.add_marker(getattr(pytest.mark, tier))


# ---------------------------------------------------------------- headless Chromium (Debian's, installed by .ci/run)
CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: without the background-networking flags Chromium keeps reaching for Google's hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by playwright (never `playwright install`), one per test module."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the serve extra installs playwright")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield launched
        launched.close()
