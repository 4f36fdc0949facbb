"""Responses from a checkpoint as a background job (issue 25): the request returns at once, sampling holds no
write lock (a labeler's submission goes through meanwhile), progress is visible, the job can be cancelled between
batches, NUL characters in samples are stripped (PostgreSQL cannot store them), and a job a stopped server left
"running" is marked failed. A checkpoint with a chat template is asked each prompt as a user turn (the export then
carries that rendering as the prompt); one without is prompted with the text, as before."""

import json
import threading
import time

from fastapi.testclient import TestClient
from serve_testing import (  # noqa: F401 (fixtures)
    ADMIN,
    Labeler,
    app,
    db_url,
    make_app,
    postgres_url,
    setup_project,
    tiny_chat_checkpoint,
    tiny_checkpoint,
)
from sqlalchemy import select

from prefer.data.formats import read_rankings
from prefer.encoding import encode_example, encode_generation_prompt, encode_prompt
from prefer.labeling import responses as sampler
from prefer.labeling.app import jobs
from prefer.labeling.app.export import write_export
from prefer.labeling.app.models import Generation, Project, Prompt, Response
from prefer.models.build import load_tokenizer

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
    original = sampler.sample_queries

    def with_nul(*args, **kwargs):  # a checkpoint whose outputs hold NUL characters
        samples = original(*args, **kwargs)
        return [[f"a\u0000{text}\u0000" for text in texts[:-1]] + ["\u0000 "] for texts in samples]

    monkeypatch.setattr(sampler, "sample_queries", with_nul)
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
    original, sampling, release = sampler.sample_queries, threading.Event(), threading.Event()
    batches = []

    def held(model, tokenizer, prompts, **kwargs):
        batches.append((len(prompts), kwargs["seed"]))
        sampling.set()
        assert release.wait(60)
        return original(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(sampler, "sample_queries", held)
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

    monkeypatch.setattr(sampler, "sample_queries", counted)
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


def _generate_and_rank(app, checkpoint, monkeypatch):
    """One prompt sampled through the job (the ids fed to the model recorded), ranked by ann, exported."""
    fed, original = [], sampler.sample_per_prompt

    def recording(model, queries, *args, **kwargs):
        fed.extend(queries)
        return original(model, queries, *args, **kwargs)

    monkeypatch.setattr(sampler, "sample_per_prompt", recording)
    client = TestClient(app)
    pid = setup_project(client, prompts=["Write a haiku:"], labelers=("ann",), kinds=())
    settings = {**SETTINGS, "max_new_tokens": 8, "checkpoint": str(checkpoint)}
    started = client.post(f"/api/admin/projects/{pid}/generate", json=settings, headers=ADMIN)
    job = wait_until_finished(client, started.json()["generation_id"])
    assert job["status"] == "done" and job["result"]["prompts_with_responses"] == 1, job
    assert client.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "ranking"}, headers=ADMIN).is_success
    ann = Labeler(app, "ann")
    [item] = ann.request("GET", "/api/queue").json()["assignments"]
    assert ann.request("GET", f"/api/assignments/{item['assignment_id']}").json()["prompt"] == "Write a haiku:"
    ranking = [2, 0, 1]
    assert ann.request("POST", f"/api/assignments/{item['assignment_id']}/submit", json={"ranking": ranking}).is_success
    return fed, job, pid


def test_a_chat_checkpoint_is_asked_each_prompt_as_a_user_turn(app, tiny_chat_checkpoint, monkeypatch, tmp_path):
    fed, job, pid = _generate_and_rank(app, tiny_chat_checkpoint, monkeypatch)
    tokenizer = load_tokenizer(tiny_chat_checkpoint)
    turn = ({"role": "user", "content": "Write a haiku:"},)
    # The model is fed the chat template's rendering (what `prefer sample --prompt` feeds it), not the bare text.
    assert fed == [encode_generation_prompt(tokenizer, turn)]
    user_turn = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    assert fed[0][: len(user_turn)] == user_turn
    assert job["result"]["chat_template"] is True
    rendered = tokenizer.apply_chat_template(list(turn), add_generation_prompt=True, tokenize=False)
    assert rendered == "<|im_start|>user\nWrite a haiku:<|im_end|>\n<|im_start|>assistant\n"
    with app.state.sessionmaker() as db:
        assert db.scalar(select(Prompt.rendered)) == rendered
        written = write_export(
            db, db.get(Project, pid), tmp_path / "export", kinds=("rankings", "pairs_conversational")
        )
    # The export carries that rendering as the prompt (prefer's readers apply no template to a string prompt), so
    # the reward model reads (document start +) the very ids the policy was prompted with; the text labelers read
    # stays in the provenance, and the conversational pairs give it as the user's turn (their readers render it).
    [comparison] = read_rankings(written["rankings"])
    assert comparison.prompt == rendered
    ids, prompt_length = encode_example(tokenizer, comparison.prompt, comparison.responses[0])
    assert ids[:prompt_length] == [tokenizer.eos_token_id, *fed[0]]
    record = json.loads(written["rankings"].read_text().splitlines()[0])
    assert record["provenance"]["prompt_shown"] == "Write a haiku:"
    pair = json.loads(written["pairs_conversational"].read_text().splitlines()[0])
    assert pair["prompt"] == list(turn)


def test_a_checkpoint_without_a_chat_template_is_prompted_with_the_text(app, tiny_checkpoint, monkeypatch, tmp_path):
    fed, job, pid = _generate_and_rank(app, tiny_checkpoint, monkeypatch)
    tokenizer = load_tokenizer(tiny_checkpoint)
    assert fed == [encode_prompt(tokenizer, "Write a haiku:")]  # eos + the text's tokens, as before
    assert job["result"]["chat_template"] is False
    with app.state.sessionmaker() as db:
        assert db.scalar(select(Prompt.rendered)) is None
        written = write_export(db, db.get(Project, pid), tmp_path / "export")
    record = json.loads(written["rankings"].read_text().splitlines()[0])
    assert record["prompt"] == "Write a haiku:" and "prompt_shown" not in record["provenance"]
