"""bench/app_latency.py in small (issue 25): 10 concurrent wrong logins and a 20-prompt generation job against a
real `prefer serve` process, on SQLite and on PostgreSQL, while a labeler reads its queue and submits. Correctness
only, no timing: no 5xx anywhere, attackers get only 401 and 429, the labeler only 2xx, and every submission is
acknowledged and stored exactly once. `python bench/app_latency.py` gives the latency figures."""

import importlib.util
import sys

import pytest
from serve_testing import REPO, db_url, postgres_url, tiny_checkpoint  # noqa: F401 (fixtures)
from sqlalchemy import func, select

from prefer.labeling.app.db import make_engine, make_sessionmaker
from prefer.labeling.app.models import Label

pytestmark = pytest.mark.load


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_app_latency", REPO / "bench" / "app_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_wrong_logins_and_generation_cause_no_5xx_and_lose_no_submission(db_url, tiny_checkpoint):
    bench = load_bench()
    phases, acknowledged = bench.run(
        db_url,
        checkpoint=str(tiny_checkpoint),
        attackers=10,
        generate=20,
        max_new_tokens=4,
        rounds=6,
        pause=0.05,
        tasks=120,
        hash_profile="test",
    )
    by_name = {phase.name: phase for phase in phases}
    assert list(by_name) == ["quiet", "logins", "generation", "both"]
    submissions = 0
    for phase in phases:
        assert phase.labeler_non_2xx == {}, phase
        assert len(phase.queue) == len(phase.submit) >= 6, phase
        submissions += len(phase.submit)
        if phase.name in ("logins", "both"):
            assert set(phase.attack) <= {401, 429} and phase.attack.get(401, 0) > 0, phase.attack
        if phase.name in ("generation", "both"):
            assert phase.job["status"] == "done" and phase.job["prompts_done"] == phase.job["prompts_total"] == 20
    # Three of the ten attackers guess ann's password: after 5 free failures her username backs off (429).
    assert by_name["logins"].attack.get(429, 0) > 0
    assert len(acknowledged) == submissions  # every submission acknowledged (201), none refused
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as db:
            labels = db.scalar(select(func.count()).select_from(Label))
            assignments = db.scalar(select(func.count(func.distinct(Label.assignment_id))))
            ids = set(db.scalars(select(Label.id)))
    finally:
        engine.dispose()
    assert labels == assignments == submissions and ids == set(acknowledged.values())  # each stored once
