"""Responses from a checkpoint as a background job (issue 25): the request returns at once, sampling holds no
write lock (a labeler's submission goes through meanwhile), progress is visible, the job can be cancelled between
batches, NUL characters in samples are stripped (PostgreSQL cannot store them), and a job a stopped server left
"running" is marked failed."""

import threading
import time

from fastapi.testclient import TestClient
from serve_testing import ADMIN, Labeler, app, db_url, make_app, postgres_url, setup_project, tiny_checkpoint  # noqa: F401
from sqlalchemy import select

from prefer.labeling import responses as sampler
from prefer.labeling.app import jobs
from prefer.labeling.app.models import Generation, Response

SETTINGS = {"num_responses": 3, "max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": 0}


def wait_until_finished(client, generation_id, timeout=120):
    deadline = time.time() + timeout
    while True:
        job = client.get(f"/api/admin/generations/{generation_id}", headers=ADMIN).json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.time() < deadline, job
        time.sleep(0.05)


def test_nul_in_samples_is_stripped_and_stored_on_both_databases(db_url, tiny_checkpoint, monkeypatch):
    original = sampler.sample_responses

    def with_nul(*args, **kwargs):  # a checkpoint whose outputs hold NUL characters
        samples = original(*args, **kwargs)
        return [[f"a\u0000{text}\u0000" for text in texts[:-1]] + ["\u0000 "] for texts in samples]

    monkeypatch.setattr(sampler, "sample_responses", with_nul)
    application = make_app(db_url)
    try:
        client = TestClient(application)
        pid = setup_project(client, prompts=["Write a haiku:", "Explain the sky:"], labelers=("ann",), kinds=())
        started = client.post(
            f"/api/admin/projects/{pid}/generate", json={**SETTINGS, "checkpoint": str(tiny_checkpoint)}, headers=ADMIN
        )
        assert started.status_code == 202 and started.json()["status"] == "running", started.text
        assert started.json()["prompts_total"] == 2
        job = wait_until_finished(client, started.json()["generation_id"])
        assert job["status"] == "done" and job["error"] is None, job
        # Each prompt: 2 samples "a<text>" kept, the third ("\u0000 ") empty once stripped and dropped.
        assert job["result"]["prompts_with_responses"] == 2 and job["result"]["responses_added"] == 4
        assert job["prompts_done"] == 2
        with application.state.sessionmaker() as db:
            texts = list(db.scalars(select(Response.text)))
        assert len(texts) == 4 and all(t.startswith("a") and "\u0000" not in t for t in texts)
    finally:
        application.state.engine.dispose()


def test_generation_runs_in_the_background_with_progress_cancel_and_no_write_lock(app, tiny_checkpoint, monkeypatch):
    """40 prompts, batches of 16: the first batch is held while the admin and a labeler use the app."""
    original, sampling, release = sampler.sample_responses, threading.Event(), threading.Event()
    batches = []

    def held(model, tokenizer, prompts, **kwargs):
        batches.append((len(prompts), kwargs["seed"]))
        sampling.set()
        assert release.wait(60)
        return original(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(sampler, "sample_responses", held)
    client = TestClient(app)
    prompts = [f"Prompt number {i}:" for i in range(40)]
    responses = {"Say hi.": ["hi", "hello", "hey"]}
    setup_project(client, prompts=prompts, responses=responses, labelers=("ann",))  # one ranking task: "Say hi."
    ann = Labeler(app, "ann")
    aid = ann.request("GET", "/api/queue").json()["assignments"][0]["assignment_id"]

    started = client.post(
        "/api/admin/projects/1/generate", json={**SETTINGS, "checkpoint": str(tiny_checkpoint)}, headers=ADMIN
    )
    assert started.status_code == 202 and started.json()["prompts_total"] == 40  # "Say hi." has its ranking task
    gid = started.json()["generation_id"]
    assert sampling.wait(60)
    try:
        # While the model samples: the labeler submits (no write lock held), the admin sees the progress.
        t0 = time.monotonic()
        submitted = ann.request("POST", f"/api/assignments/{aid}/submit", json={"ranking": [2, 0, 1]})
        assert submitted.status_code == 201 and time.monotonic() - t0 < 10
        job = client.get(f"/api/admin/generations/{gid}", headers=ADMIN).json()
        assert (job["status"], job["prompts_done"], job["prompts_total"]) == ("running", 0, 40)
        again = client.post(
            "/api/admin/projects/1/generate", json={**SETTINGS, "checkpoint": str(tiny_checkpoint)}, headers=ADMIN
        )
        assert again.status_code == 409 and f"generation {gid} is still running" in again.json()["detail"]
        cancel = client.post(f"/api/admin/generations/{gid}/cancel", headers=ADMIN)
        assert cancel.status_code == 200 and cancel.json()["cancel_requested"] is True
    finally:
        release.set()
    job = wait_until_finished(client, gid)
    # The batch being sampled when the cancel came is written; the next two are never sampled.
    assert job["status"] == "cancelled" and job["prompts_done"] == 16 and batches == [(16, 0)], (job, batches)
    assert job["result"]["prompts_with_responses"] + job["result"]["prompts_dropped_fewer_than_two_nonempty"] == 16
    listed = client.get("/api/admin/projects/1/generations", headers=ADMIN).json()["generations"]
    assert [g["generation_id"] for g in listed] == [gid]
    assert client.post(f"/api/admin/generations/{gid}/cancel", headers=ADMIN).status_code == 409  # already over
    assert client.get("/api/admin/generations/999", headers=ADMIN).status_code == 404

    # A second job samples every prompt still without a ranking task (all 40: the first 16 get new responses), in
    # batches of 16, 16 and 8 prompts seeded seed + 0, seed + 16 and seed + 32.
    def counted(model, tokenizer, prompts, **kwargs):
        batches.append((len(prompts), kwargs["seed"]))
        return original(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(sampler, "sample_responses", counted)
    batches.clear()
    second = client.post(
        "/api/admin/projects/1/generate", json={**SETTINGS, "checkpoint": str(tiny_checkpoint)}, headers=ADMIN
    ).json()
    job = wait_until_finished(client, second["generation_id"])
    assert job["status"] == "done" and job["prompts_done"] == 40 and batches == [(16, 0), (16, 16), (8, 32)], job


def test_a_failing_checkpoint_fails_the_job_with_its_error(app, tmp_path):
    client = TestClient(app)
    setup_project(client, prompts=["p"], labelers=("ann",), kinds=())
    (tmp_path / "empty").mkdir()
    started = client.post("/api/admin/projects/1/generate", json={"checkpoint": str(tmp_path / "empty")}, headers=ADMIN)
    assert started.status_code == 202
    job = wait_until_finished(client, started.json()["generation_id"])
    assert job["status"] == "failed" and job["error"].startswith("checkpoint"), job


def test_jobs_of_a_stopped_server_are_marked_failed(app):
    client = TestClient(app)
    setup_project(client, prompts=["p"], labelers=("ann",), kinds=())
    with app.state.sessionmaker() as db:
        db.add(Generation(project_id=1, checkpoint="/x", settings={}, status="running", prompts_total=1))
        db.add(Generation(project_id=1, checkpoint="/y", settings={}, status="done", prompts_total=1))
        db.commit()
    assert jobs.fail_interrupted(app.state.sessionmaker) == 1
    views = client.get("/api/admin/projects/1/generations", headers=ADMIN).json()["generations"]
    assert [(v["status"], v["error"]) for v in views] == [("done", None), ("failed", "the server stopped while it ran")]
