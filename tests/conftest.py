"""Shared fixtures: a small synthetic PII corpus (tiny_runs.py), one thread for tiny models, the test tiers, and
headless Chromium."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chromium import CHROMIUM, CHROMIUM_FLAGS  # tests/chromium.py, shared with scripts/app_screenshots.py
from tiny_runs import write_pii_corpus

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` (the default, pyproject.toml): N workers already share the cores, so one thread each, in this
    # process and in the commands its tests start; N x cores OpenMP threads spinning against each other made the
    # experiments test's setup 5x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pii_corpus(tmp_path_factory):
    """Changelog-like entries whose maintainer trailers carry an email (tiny_runs.write_pii_corpus)."""
    return write_pii_corpus(tmp_path_factory.mktemp("corpus") / "changelogs.jsonl")


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


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin package pip-installed (no network, no build isolation: this environment's setuptools)
    into a directory of its own; on sys.path or PYTHONPATH its entry points are found."""
    tmp = tmp_path_factory.mktemp("plugin")
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "examples" / "prefer-example-scorer", tmp / "src"
    )  # builds write into the source tree
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--disable-pip-version-check", "--target", str(tmp / "site"), str(tmp / "src")],
        check=True,
        capture_output=True,
    )
    return tmp / "site"
