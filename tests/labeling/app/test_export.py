"""Export: what labelers submitted comes out as files prefer's own readers load (rankings with ties, demonstrations),
pairs for other tools, provenance per labeler; agreement and progress on an overlap of two; responses sampled from a
checkpoint with their settings recorded; the app starts without torch."""

import json
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from serve_testing import ADMIN, REPO, Labeler, app, setup_project, tiny_checkpoint  # noqa: F401 (fixtures)

from prefer.cli import main
from prefer.data.formats import Comparison, Demonstration, read_demonstrations, read_rankings
from prefer.labeling.app.export import write_export
from prefer.labeling.app.models import Project

RESPONSES = {"Say hi.": ["hi", "hello there", "hey", "good day"], "Name a colour.": ["red", "blue", "green"]}


def open_tasks(labeler):
    return {
        (a["kind"], a["prompt"]): a["assignment_id"] for a in labeler.request("GET", "/api/queue").json()["assignments"]
    }


@pytest.fixture
def labelled(app):
    """ann and bob both label every task (overlap 2)."""
    client = TestClient(app)
    pid = setup_project(
        client,
        prompts=list(RESPONSES),
        responses=RESPONSES,
        labelers=("ann", "bob"),
        overlap=2,
        kinds=("ranking", "demonstration"),
    )
    ann, bob = Labeler(app, "ann"), Labeler(app, "bob")
    a, b = open_tasks(ann), open_tasks(bob)
    submit = lambda who, aid, body: who.request("POST", f"/api/assignments/{aid}/submit", json=body)  # noqa: E731
    assert submit(ann, a["ranking", "Say hi."], {"ranking": [2, [0, 3], 1], "quality": 6}).status_code == 201
    assert submit(bob, b["ranking", "Say hi."], {"ranking": [2, 0, 3, 1], "flags": ["harmful"]}).status_code == 201
    assert submit(ann, a["ranking", "Name a colour."], {"ranking": [0, 1, 2]}).status_code == 201
    assert submit(bob, b["ranking", "Name a colour."], {"ranking": [2, 1, 0]}).status_code == 201
    assert submit(ann, a["demonstration", "Say hi."], {"demonstration": "Hello! How can I help?"}).status_code == 201
    bob.request("PUT", f"/api/assignments/{b['demonstration', 'Say hi.']}/draft", json={"demonstration": "unfinished"})
    bob.request("POST", f"/api/assignments/{b['demonstration', 'Name a colour.']}/skip")
    return client, pid


def test_export_round_trips_through_prefers_readers(app, labelled, tmp_path):
    client, pid = labelled
    with app.state.sessionmaker() as db:
        written = write_export(db, db.get(Project, pid), tmp_path / "export")
    rankings = read_rankings(written["rankings"])
    assert sorted(rankings, key=repr) == sorted(
        [
            Comparison("Say hi.", tuple(RESPONSES["Say hi."]), (1, 2, 0, 1)),  # [2, [0, 3], 1]: 2 best, 0 = 3, 1 worst
            Comparison("Say hi.", tuple(RESPONSES["Say hi."]), (1, 3, 0, 2)),
            Comparison("Name a colour.", tuple(RESPONSES["Name a colour."]), (0, 1, 2)),
            Comparison("Name a colour.", tuple(RESPONSES["Name a colour."]), (2, 1, 0)),
        ],
        key=repr,
    )
    # The draft and the skip are not answers.
    assert read_demonstrations(written["demonstrations"]) == [Demonstration("Say hi.", "Hello! How can I help?")]
    records = [json.loads(line) for line in written["rankings"].read_text().splitlines()]
    assert {
        (r["provenance"]["labeler"], r["ranking"] == [2, [0, 3], 1]) for r in records if r["prompt"] == "Say hi."
    } == {("ann", True), ("bob", False)}
    ann_hi = next(r for r in records if r["provenance"]["labeler"] == "ann" and r["prompt"] == "Say hi.")
    assert ann_hi["provenance"]["quality"] == 6 and ann_hi["provenance"]["version"] == 1
    pairs = [json.loads(line) for line in written["pairs"].read_text().splitlines()]
    # ann on "Say hi.": 6 pairs minus the tie (0, 3) = 5; bob 6; colours 3 + 3 -> 17.
    assert len(pairs) == 17 and all(set(p) == {"prompt", "chosen", "rejected", "provenance"} for p in pairs)
    assert {"prompt": "Say hi.", "chosen": "hey", "rejected": "hello there"} in [
        {k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs
    ]
    # The admin page's download is the same file.
    download = client.get(f"/api/admin/projects/{pid}/export/rankings.jsonl", headers=ADMIN)
    assert download.status_code == 200 and download.text == written["rankings"].read_text()


def test_agreement_and_progress(app, labelled):
    client, pid = labelled
    agreement = client.get(f"/api/admin/projects/{pid}/agreement", headers=ADMIN).json()
    # "Say hi.": ann (1,2,0,1) vs bob (1,3,0,2): the pair (0,3) is tied by ann; the other 5 agree -> tau-b
    # 5 / sqrt(5 * 6). Colours: reversed, 0 of 3, tau -1. Pooled: 5 / 8; mean tau (0.9129 - 1) / 2.
    overall = agreement["overall"]
    assert (overall["pairs_compared"], overall["pairs_agreed"], overall["pairs_tied"]) == (8, 5, 1)
    assert overall["pairwise_agreement"] == pytest.approx(5 / 8)
    assert overall["kendall_tau_mean"] == pytest.approx((5 / 30**0.5 - 1) / 2)
    assert agreement["tasks_with_overlap"] == 2 and agreement["per_labeler"]["ann"]["pairs_agreed"] == 5
    progress = client.get(f"/api/admin/projects/{pid}/progress", headers=ADMIN).json()
    assert progress["tasks"] == {"ranking": 2, "demonstration": 2} and progress["tasks_complete"] == 2
    assert progress["labelers"]["ann"] == {"pending": 1, "draft": 0, "skipped": 0, "submitted": 3, "assigned": 4}
    assert progress["labelers"]["bob"] == {"pending": 0, "draft": 1, "skipped": 1, "submitted": 2, "assigned": 4}


def test_prefer_export_command(app, labelled, tmp_path, capsys):
    db_path = app.state.engine.url.database
    assert main(["export", "--db", db_path, "--project", "p", "--out", str(tmp_path / "cli")]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == {"rankings": 4, "demonstrations": 1, "pairs": 17}
    assert read_rankings(tmp_path / "cli" / "rankings.jsonl")
    assert main(["export", "--db", db_path, "--project", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "--project: no project named 'nope'" in capsys.readouterr().err


def wait_for_generation(client, generation_id, timeout=120):
    deadline = time.time() + timeout
    while True:
        job = client.get(f"/api/admin/generations/{generation_id}", headers=ADMIN).json()
        if job["status"] not in ("queued", "running"):
            assert job["status"] == "done", job
            return job
        assert time.time() < deadline, job
        time.sleep(0.1)


def test_responses_generated_from_a_checkpoint(app, tiny_checkpoint):
    client = TestClient(app)
    pid = setup_project(client, prompts=["Write a haiku:", "Explain the sky:"], labelers=("ann",), kinds=())
    settings = {
        "checkpoint": str(tiny_checkpoint),
        "num_responses": 4,
        "max_new_tokens": 8,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 3,
    }
    missing = client.post(
        f"/api/admin/projects/{pid}/generate", json={**settings, "checkpoint": "/no/such/dir"}, headers=ADMIN
    )
    assert missing.status_code == 422 and missing.json()["detail"].startswith("checkpoint:")
    response = client.post(f"/api/admin/projects/{pid}/generate", json=settings, headers=ADMIN)
    # A background job since migration 0003: accepted at once, then its result is read from the job.
    assert response.status_code == 202, response.text
    result = wait_for_generation(client, response.json()["generation_id"])["result"]
    assert result["prompts_with_responses"] + result["prompts_dropped_fewer_than_two_nonempty"] == 2
    assert result["prompts_with_responses"] >= 1
    from prefer.labeling.app.models import Generation, Response

    with app.state.sessionmaker() as db:
        generation = db.get(Generation, result["generation_id"])
        assert generation.checkpoint == str(tiny_checkpoint)
        assert generation.settings == {
            "num_responses": 4,
            "max_new_tokens": 8,
            "temperature": 1.0,
            "top_p": 0.9,
            "block": "both",
            "seed": 3,
        }
        assert all(r.generation_id == generation.id for r in db.query(Response))
    assert (
        client.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "ranking"}, headers=ADMIN).json()["tasks_created"]
        == result["prompts_with_responses"]
    )


def test_the_app_starts_without_torch():
    code = (
        "import sys; from prefer.cli import build_parser; build_parser(); "
        "import prefer.labeling.app.server, prefer.labeling.app.export; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"


def test_serve_help_lists_its_options_and_a_missing_token_is_one_error_line(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--db", "--host", "--port", "--admin-token", "--admin-token-env", "PREFER_ADMIN_TOKEN", "--workers"):
        assert option in out
    monkeypatch.delenv("PREFER_ADMIN_TOKEN", raising=False)
    assert main(["serve", "--db", str(tmp_path / "x.db")]) == 2
    assert capsys.readouterr().err.strip() == (
        "prefer: error: admin token: set the environment variable PREFER_ADMIN_TOKEN (or pass --admin-token)"
    )
    assert main(["serve", "--db", str(tmp_path / "x.db"), "--admin-token", "short"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
