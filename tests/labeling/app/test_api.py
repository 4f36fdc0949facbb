"""The labeling API on SQLite, in process: a labeler's whole flow, validation (4xx naming the field, nothing
half-written), idempotency, CSRF, locking, uploads, hashed credentials and escaping."""

import hashlib

import pytest
from fastapi.testclient import TestClient
from serve_testing import ADMIN, PASSWORD, TOKEN, Labeler, app, jsonl, setup_project  # noqa: F401 (fixture)
from sqlalchemy import func, select

from prefer.labeling.app.models import Assignment, Label, Prompt, Session, User
from prefer.labeling.app.server import create_app

RESPONSES = {"Say hi.": ["hi", "hello there", "hey", "good day"], "Name a colour.": ["red", "blue", "green"]}


def count(app, model, *where):
    with app.state.sessionmaker() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where))


def assignments_of(labeler, kind="ranking"):
    return {
        a["prompt"]: a["assignment_id"]
        for a in labeler.request("GET", "/api/queue").json()["assignments"]
        if a["kind"] == kind
    }


@pytest.fixture
def project(app):
    client = TestClient(app)
    pid = setup_project(
        client, prompts=list(RESPONSES), responses=RESPONSES, labelers=("ann",), kinds=("ranking", "demonstration")
    )
    return pid, Labeler(app, "ann")


def test_rank_with_ties_draft_resume_edit_and_lock(app, project):
    pid, ann = project
    queue = ann.request("GET", "/api/queue").json()["assignments"]
    assert len(queue) == 4 and {a["kind"] for a in queue} == {"ranking", "demonstration"}
    aid = next(a["assignment_id"] for a in queue if a["kind"] == "ranking" and a["prompt"] == "Say hi.")
    view = ann.request("GET", f"/api/assignments/{aid}").json()
    assert sorted(r["index"] for r in view["responses"]) == [0, 1, 2, 3]
    assert {r["text"] for r in view["responses"]} == set(RESPONSES["Say hi."])

    # A draft survives logging out and in again, and puts the task first in the queue.
    assert (
        ann.request("PUT", f"/api/assignments/{aid}/draft", json={"ranking": [1, 0], "quality": 5}).status_code == 200
    )
    assert ann.request("POST", "/api/logout").status_code == 200
    assert ann.request("GET", "/api/queue").status_code == 401
    ann = Labeler(app, "ann")
    again = ann.request("GET", f"/api/assignments/{aid}").json()
    assert again["status"] == "draft" and again["draft"]["ranking"] == [1, 0] and again["draft"]["quality"] == 5
    assert ann.request("GET", "/api/queue").json()["assignments"][0]["assignment_id"] == aid

    answer = {"ranking": [2, [0, 3], 1], "quality": 6, "flags": ["made_up_facts"]}
    first = ann.request("POST", f"/api/assignments/{aid}/submit", json=answer)
    assert first.status_code == 201 and first.json()["version"] == 1
    edit = ann.request("POST", f"/api/assignments/{aid}/submit", json={"ranking": [0, 1, 2, 3]})
    assert edit.status_code == 201 and edit.json()["version"] == 2  # an edit is a new version, not an overwrite
    assert ann.request("GET", f"/api/assignments/{aid}").json()["label"]["ranking"] == [0, 1, 2, 3]
    assert count(app, Label) == 2

    assert (
        TestClient(app).post(f"/api/admin/projects/{pid}/lock", json={"locked": True}, headers=ADMIN).status_code == 200
    )
    for method, url, body in [
        ("POST", f"/api/assignments/{aid}/submit", answer),
        ("PUT", f"/api/assignments/{aid}/draft", answer),
        ("POST", f"/api/assignments/{aid}/skip", None),
    ]:
        refused = ann.request(method, url, json=body)
        assert refused.status_code == 409 and "locked" in refused.json()["detail"]
    assert count(app, Label) == 2
    TestClient(app).post(f"/api/admin/projects/{pid}/lock", json={"locked": False}, headers=ADMIN)
    assert ann.request("POST", f"/api/assignments/{aid}/submit", json=answer).json()["version"] == 3


def test_skip_then_answer_and_demonstration(app, project):
    _, ann = project
    queue = ann.request("GET", "/api/queue").json()["assignments"]
    demo = next(a["assignment_id"] for a in queue if a["kind"] == "demonstration")
    assert ann.request("POST", f"/api/assignments/{demo}/skip").json()["status"] == "skipped"
    assert ann.request("GET", "/api/queue").json()["assignments"][-1]["assignment_id"] == demo  # skipped go last
    ok = ann.request("POST", f"/api/assignments/{demo}/submit", json={"demonstration": "Hello! How can I help?"})
    assert ok.status_code == 201
    assert ann.request("POST", f"/api/assignments/{demo}/skip").status_code == 409  # submitted: edit, not skip


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"ranking": [0, 1, 2]}, 422, "leaves out response(s) [3]"),
        ({"ranking": [0, 0, 1, 2]}, 422, "lists response 0 twice"),
        ({"ranking": [0, 1, 2, 7]}, 422, "index 7 is out of range"),
        ({"ranking": [[0, 1, 2, 3]]}, 422, "ranking: every response ties"),
        ({"ranking": ["0", 1, 2, 3]}, 422, "ranking.0"),
        ({"ranking": [True, 1, 2, 3]}, 422, "ranking.0"),
        ({"ranking": list(range(10))}, 422, "ranking: List should have at most 9 items"),
        ({}, 422, "ranking"),
        ({"ranking": [0, 1, 2, 3], "quality": 8}, 422, "quality: Input should be less than or equal to 7"),
        ({"ranking": [0, 1, 2, 3], "flags": ["rude"]}, 422, "flags.0"),
        ({"ranking": [0, 1, 2, 3], "rank": [0]}, 422, "rank: Extra inputs are not permitted"),
        ({"ranking": [0, 1, 2, 3], "demonstration": "x"}, 422, "demonstration: a ranking task takes"),
        ({"demonstration": "x" * 20_001}, 422, "demonstration: String should have at most 20000 characters"),
    ],
)
def test_bad_answers_are_refused_naming_the_field_and_write_nothing(app, project, body, status, field):
    _, ann = project
    aid = assignments_of(ann)["Say hi."]
    response = ann.request("POST", f"/api/assignments/{aid}/submit", json=body, headers={"Idempotency-Key": "k1"})
    assert response.status_code == status and field in response.json()["detail"], response.text
    assert count(app, Label) == 0
    assert ann.request("GET", f"/api/assignments/{aid}").json()["status"] == "pending"


def test_unknown_ids_and_demonstration_checks(app, project):
    _, ann = project
    missing = ann.request("POST", "/api/assignments/99999/submit", json={"ranking": [0, 1]})
    assert missing.status_code == 404 and "assignment_id 99999" in missing.json()["detail"]
    assert "assignment_id" in ann.request("GET", "/api/assignments/abc").json()["detail"]
    demo = next(
        a["assignment_id"]
        for a in ann.request("GET", "/api/queue").json()["assignments"]
        if a["kind"] == "demonstration"
    )
    for body, field in [
        ({"demonstration": "   "}, "demonstration: the ideal response is required"),
        ({"demonstration": "x", "ranking": [0, 1]}, "ranking: a demonstration task takes"),
    ]:
        response = ann.request("POST", f"/api/assignments/{demo}/submit", json=body)
        assert response.status_code == 422 and field in response.json()["detail"]
    assert count(app, Label) == 0


def test_oversized_request_body_is_refused(tmp_path):
    from prefer.labeling.app.db import make_engine, upgrade

    url = str(tmp_path / "small.db")
    upgrade(make_engine(url))
    small = create_app(url, TOKEN, max_body_bytes=1000, hash_profile="test")
    response = TestClient(small).post("/api/admin/projects/1/prompts", content=b"x" * 2000, headers=ADMIN)
    assert response.status_code == 413 and "request body" in response.json()["detail"]


def test_idempotency_key_replays_instead_of_writing_twice(app, project):
    _, ann = project
    ids = assignments_of(ann)
    aid, other = ids["Say hi."], ids["Name a colour."]
    key = {"Idempotency-Key": "submit-1"}
    first = ann.request("POST", f"/api/assignments/{aid}/submit", json={"ranking": [0, 1, 2, 3]}, headers=key)
    retry = ann.request("POST", f"/api/assignments/{aid}/submit", json={"ranking": [0, 1, 2, 3]}, headers=key)
    assert first.status_code == 201 and retry.status_code == 200 and retry.json()["replayed"]
    assert retry.json()["label_id"] == first.json()["label_id"] and count(app, Label) == 1
    reused = ann.request("POST", f"/api/assignments/{other}/submit", json={"ranking": [0, 1, 2]}, headers=key)
    assert reused.status_code == 409 and "Idempotency-Key" in reused.json()["detail"] and count(app, Label) == 1


def test_csrf_is_required_for_every_state_change(app, project):
    pid, ann = project
    aid = assignments_of(ann)["Say hi."]
    body = {"ranking": [0, 1, 2, 3]}
    bob_client = TestClient(app)
    TestClient(app).post("/api/admin/labelers", json={"username": "bob", "password": PASSWORD}, headers=ADMIN)
    bob = Labeler(app, "bob")
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": bob.csrf}):  # none, wrong, another session's
        for method, url in [
            ("POST", f"/api/assignments/{aid}/submit"),
            ("PUT", f"/api/assignments/{aid}/draft"),
            ("POST", f"/api/assignments/{aid}/skip"),
            ("POST", "/api/logout"),
        ]:
            response = ann.client.request(method, url, json=body, headers=headers)
            assert response.status_code == 403 and "CSRF" in response.json()["detail"], (method, url, headers)
    # The admin's cookie session needs it too; the bearer token (no cookie) does not.
    admin = TestClient(app)
    csrf = admin.post("/api/admin/login", json={"token": TOKEN}).json()["csrf_token"]
    assert admin.post("/api/admin/projects", json={"name": "x"}).status_code == 403
    assert admin.post("/api/admin/projects", json={"name": "x"}, headers={"X-CSRF-Token": csrf}).status_code == 201
    # Login takes JSON only: a cross-site form post (urlencoded) cannot log a victim in.
    assert bob_client.post("/api/login", data={"username": "ann", "password": PASSWORD}).status_code == 422
    assert count(app, Label) == 0


def test_credentials_are_stored_hashed(app, project, tmp_path):
    _, ann = project
    cookie = ann.client.cookies.get("prefer_session")
    with app.state.sessionmaker() as db:
        user = db.scalar(select(User).where(User.username == "ann"))
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
        hashes = list(db.scalars(select(Session.token_hash)))
        assert hashlib.sha256(cookie.encode()).hexdigest() in hashes and cookie not in hashes
    raw = (tmp_path / "labels.db").read_bytes() + (tmp_path / "labels.db-wal").read_bytes()
    assert PASSWORD.encode() not in raw and cookie.encode() not in raw and TOKEN.encode() not in raw
    assert TestClient(app).post("/api/login", json={"username": "ann", "password": "wrong password"}).status_code == 401
    assert TestClient(app).post("/api/login", json={"username": "nobody", "password": PASSWORD}).status_code == 401
    assert TestClient(app).post("/api/admin/login", json={"token": "not-the-token"}).status_code == 401


def test_uploads_are_checked_whole_before_anything_is_written(app):
    client = TestClient(app)
    pid = client.post("/api/admin/projects", json={"name": "u"}, headers=ADMIN).json()["id"]
    bad = b'{"prompt": "a"}\n{"prompt": "b"}\n{"text": "c"}\n'
    response = client.post(f"/api/admin/projects/{pid}/prompts?filename=prompts.jsonl", content=bad, headers=ADMIN)
    assert response.status_code == 422 and response.json()["detail"] == "prompts.jsonl:3: field 'prompt' must be a str"
    too_few = jsonl([{"prompt": "a", "responses": ["x", "y"]}, {"prompt": "b", "responses": ["only one"]}])
    response = client.post(f"/api/admin/projects/{pid}/responses?filename=r.jsonl", content=too_few, headers=ADMIN)
    assert response.status_code == 422 and response.json()["detail"].startswith("r.jsonl:2: field 'responses'")
    assert count(app, Prompt) == 0
    unknown = client.post("/api/admin/projects/777/prompts", content=b'{"prompt": "a"}\n', headers=ADMIN)
    assert unknown.status_code == 404 and "project_id 777" in unknown.json()["detail"]
    overlap = client.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "ranking", "overlap": 3}, headers=ADMIN)
    assert overlap.status_code == 422 and overlap.json()["detail"].startswith("overlap:")


def test_pages_escape_what_users_wrote(app):
    client = TestClient(app)
    pid = client.post("/api/admin/projects", json={"name": "<script>alert(1)</script>"}, headers=ADMIN).json()["id"]
    client.post("/api/admin/login", json={"token": TOKEN})
    page = client.get(f"/admin/projects/{pid}")
    assert page.status_code == 200 and "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script could run anyway


def test_assignment_state_matches_labels(app, project):
    _, ann = project
    aid = assignments_of(ann)["Say hi."]
    ann.request("POST", f"/api/assignments/{aid}/submit", json={"ranking": [3, 2, 1, 0]})
    with app.state.sessionmaker() as db:
        assert db.get(Assignment, aid).status == "submitted" and db.get(Assignment, aid).draft is None
