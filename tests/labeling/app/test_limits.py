"""Limits that hold (issue 25): the body limit counted on streamed bytes (chunked bodies too), login back-off per
username, per address and for the admin token, password checks and reads outside the SQLite write lock, NUL
characters refused naming the field, upload inputs that were 500s now 4xx, drafts validated, and a reused
idempotency key with another answer refused."""

import os
import select
import socket
import sqlite3
import threading
import time

import pytest
from fastapi.testclient import TestClient
from serve_testing import (  # noqa: F401 (fixtures)
    ADMIN,
    PASSWORD,
    TOKEN,
    Labeler,
    app,
    db_url,
    jsonl,
    make_app,
    postgres_url,
    server,
    setup_project,
)
from sqlalchemy import func
from sqlalchemy import select as sql_select

from prefer.labeling.app import api
from prefer.labeling.app.db import make_engine, upgrade
from prefer.labeling.app.models import Label, Project, Prompt, User
from prefer.labeling.app.server import create_app

RESPONSES = {"Say hi.": ["hi", "hello there", "hey", "good day"]}


def count(application, model):
    with application.state.sessionmaker() as db:
        return db.scalar(sql_select(func.count()).select_from(model))


# ----- the body limit -----


def test_a_chunked_body_over_the_limit_is_refused_on_every_route(tmp_path):
    url = str(tmp_path / "small.db")
    upgrade(make_engine(url))
    small = create_app(url, TOKEN, max_body_bytes=1000, hash_profile="test")
    client = TestClient(small)

    def chunks(total=5000):  # no Content-Length: httpx sends a generator chunked
        for _ in range(total // 500):
            yield b"x" * 500

    pid = client.post("/api/admin/projects", json={"name": "p"}, headers=ADMIN).json()["id"]
    for url in ("/api/login", "/api/admin/login", f"/api/admin/projects/{pid}/prompts"):
        response = client.post(url, content=chunks(), headers=ADMIN if "projects" in url else {})
        assert response.status_code == 413 and "request body" in response.json()["detail"], (url, response.text)
    assert count(small, Prompt) == 0
    ok = client.post(f"/api/admin/projects/{pid}/prompts", content=iter([b'{"prompt": "a"}\n']), headers=ADMIN)
    assert ok.status_code == 200  # a chunked body under the limit is fine
    small.state.engine.dispose()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's memory from /proc")
def test_a_real_server_stops_an_endless_chunked_body_without_reading_it(tmp_path, monkeypatch):
    """An anonymous client streams a 256 MiB chunked body at /api/login of a server limited to 1 MiB: it hears
    413 after a few MiB at most, and the server's memory does not grow by the body."""
    monkeypatch.setenv("PREFER_SERVE_MAX_BODY", str(2**20))
    with server(str(tmp_path / "labels.db")) as (base, process):
        port = int(base.rsplit(":", 1)[1])
        before = rss_kib(process.pid)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(
            b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (2**16, b" " * 2**16)
        sent, reply = 0, b""
        try:
            while sent < 256 * 2**20:
                sock.sendall(chunk)
                sent += 2**16
                if select.select([sock], [], [], 0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while b"\r\n\r\n" not in reply:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
        sock.close()
        grown_mib = (rss_kib(process.pid) - before) / 1024
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 32 * 2**20, f"the client sent {sent / 2**20:.0f} MiB before the refusal"
    assert grown_mib < 32, f"the server grew by {grown_mib:.0f} MiB"
    print(f"\n[limits] 413 after {sent / 2**20:.1f} MiB sent of 256; server memory grew {grown_mib:.1f} MiB")


# ----- login back-off -----


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_login_backs_off_per_username_with_retry_after(app):
    client = TestClient(app)
    client.post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN)
    app.state.backoff.clock = clock = Clock()

    def login(password, username="ann"):
        return client.post("/api/login", json={"username": username, "password": password})

    assert [login("wrong").status_code for _ in range(5)] == [401] * 5  # 5 free failures
    # The 6th attempt waits 1 * 2**(5 - 5) = 1 s after the 5th failure, even with the right password.
    refused = login(PASSWORD)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1" and "1 s" in refused.json()["detail"]
    clock.t += 1.01
    assert login("wrong").status_code == 401  # checked, the 6th failure: the next waits 2**(6 - 5) = 2 s
    assert login(PASSWORD).headers["retry-after"] == "2"
    clock.t += 2.01
    assert login("wrong").status_code == 401  # 7th: 4 s
    clock.t += 3.5
    assert login(PASSWORD).headers["retry-after"] == "1"  # ceil(4 - 3.5)
    clock.t += 0.51
    assert login(PASSWORD).status_code == 200  # the right password, after the wait: the count is cleared
    assert login("wrong").status_code == 401 and login(PASSWORD).status_code == 200
    # Another username from this address is not held back by ann's count.
    assert login("wrong", "bob").status_code == 401


def test_login_backs_off_per_address_across_usernames(app):
    client = TestClient(app)
    client.post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN)
    app.state.backoff.clock = Clock()
    statuses = [
        client.post("/api/login", json={"username": f"guess{i}", "password": "x"}).status_code for i in range(20)
    ]
    assert statuses == [401] * 20  # 20 free failures per address, each under a fresh username
    blocked = client.post("/api/login", json={"username": "ann", "password": PASSWORD})
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "1"


def test_admin_token_guesses_back_off(app):
    client = TestClient(app)
    app.state.backoff.clock = clock = Clock()
    guesses = [client.post("/api/admin/login", json={"token": f"guess-{i:016d}"}).status_code for i in range(5)]
    assert guesses == [401] * 5
    held = client.post("/api/admin/login", json={"token": TOKEN})
    assert held.status_code == 429 and held.headers["retry-after"] == "1"
    clock.t += 1.01
    assert client.post("/api/admin/login", json={"token": TOKEN}).status_code == 200
    # Through the Authorization header too (5 free guesses, then 1 s; right tokens are not counted).
    wrong = {"Authorization": "Bearer " + "x" * 20}
    assert [client.get("/api/admin/projects", headers=wrong).status_code for _ in range(5)] == [401] * 5
    held = client.get("/api/admin/projects", headers=ADMIN)
    assert held.status_code == 429 and held.headers["retry-after"] == "1"
    clock.t += 1.01
    assert [client.get("/api/admin/projects", headers=ADMIN).status_code for _ in range(10)] == [200] * 10
    assert client.get("/api/admin/projects", headers=wrong).status_code == 401  # the 6th wrong one, after the wait
    assert client.get("/api/admin/projects", headers=ADMIN).headers["retry-after"] == "2"  # 2**(6 - 5)


# ----- slow work outside the write lock (SQLite) -----


def write_lock_free(path) -> bool:
    """Whether another connection can take the SQLite write lock right now (waits at most 50 ms)."""
    probe = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def test_password_checks_and_hashes_run_outside_the_write_lock(app, tmp_path, monkeypatch):
    path = tmp_path / "labels.db"
    seen = []
    verify, hash_ = api.verify_password, api.hash_password
    monkeypatch.setattr(api, "verify_password", lambda *a: seen.append(("verify", write_lock_free(path))) or verify(*a))
    monkeypatch.setattr(api, "hash_password", lambda *a: seen.append(("hash", write_lock_free(path))) or hash_(*a))
    client = TestClient(app)
    assert (
        client.post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN).status_code
        == 201
    )
    assert client.post("/api/login", json={"username": "ann", "password": "wrong"}).status_code == 401
    ann = Labeler(app, "ann")
    assert (
        ann.request("POST", "/api/password", json={"current_password": PASSWORD, "new_password": "x" * 12}).status_code
        == 200
    )
    uid = client.get("/api/admin/labelers", headers=ADMIN).json()["labelers"][0]["id"]
    assert client.patch(f"/api/admin/labelers/{uid}", json={"password": "y" * 12}, headers=ADMIN).status_code == 200
    assert seen == [
        ("hash", True),  # creating ann
        ("verify", True),  # the wrong login
        ("verify", True),  # the right login
        ("verify", True),  # the password change: the current password
        ("hash", True),  # and the new one
        ("hash", True),  # the admin's reset
    ]


def test_reads_do_not_wait_for_the_write_lock(app, tmp_path):
    client = TestClient(app)
    setup_project(client, prompts=list(RESPONSES), responses=RESPONSES, labelers=("ann",))
    ann = Labeler(app, "ann")
    holder = sqlite3.connect(tmp_path / "labels.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a long write elsewhere (a big upload, say)
    results = {}
    reader = threading.Thread(target=lambda: results.update(queue=ann.request("GET", "/api/queue").status_code))
    try:
        started = time.monotonic()
        reader.start()
        reader.join(10)
        results["seconds"] = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        reader.join()
    assert results.get("queue") == 200 and results["seconds"] < 10, results


def test_a_storm_of_password_checks_holds_no_slot_a_labeler_needs(tmp_path, monkeypatch):
    """Password checks wait in a queue of their own: with every check stuck (an event nobody sets until the end)
    and more logins waiting than the server has request slots, a labeler's queue request is still answered.
    Before the fix each waiting login held one of the `concurrency` slots, and the queue request waited for them."""
    url = str(tmp_path / "labels.db")
    upgrade(make_engine(url))
    small = create_app(url, TOKEN, hash_profile="test", concurrency=2)
    with TestClient(small) as client:
        setup_project(client, prompts=list(RESPONSES), responses=RESPONSES, labelers=("ann",))
        # ann logs in through this client, so that every request below runs on its one event loop
        assert client.post("/api/login", json={"username": "ann", "password": PASSWORD}).status_code == 200
        release, entered = threading.Event(), threading.Semaphore(0)
        verify = api.verify_password

        def stuck_verify(*args):
            entered.release()
            release.wait(60)
            return verify(*args)

        monkeypatch.setattr(api, "verify_password", stuck_verify)
        storm = [
            threading.Thread(target=lambda: client.post("/api/login", json={"username": "ann", "password": "wrong"}))
            for _ in range(6)  # 3x the request slots
        ]
        results = {}
        reader = threading.Thread(target=lambda: results.update(queue=client.get("/api/queue")))
        try:
            for login in storm:
                login.start()
            assert entered.acquire(timeout=30)  # a check is under way (and stuck) before the labeler asks
            reader.start()
            reader.join(30)
            answered_during_storm = not reader.is_alive()
        finally:
            release.set()
            for login in storm:
                login.join(60)
            if reader.ident is not None:  # started
                reader.join(60)
        assert answered_during_storm and results["queue"].status_code == 200, results
    small.state.engine.dispose()


# ----- NUL characters, on SQLite and PostgreSQL -----


def test_nul_characters_are_refused_naming_the_field(db_url):
    application = make_app(db_url)
    client = TestClient(application)
    try:
        for body, field in [
            ({"name": "a\u0000b"}, "name"),
            ({"name": "ok", "instructions": "line\u0000"}, "instructions"),
        ]:
            response = client.post("/api/admin/projects", json=body, headers=ADMIN)
            assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}: "), response.text
            assert "NUL" in response.json()["detail"]
        pid = setup_project(
            client, prompts=list(RESPONSES), responses=RESPONSES, labelers=("ann",), kinds=("ranking", "demonstration")
        )
        prompts = client.post(
            f"/api/admin/projects/{pid}/prompts?filename=p.jsonl", content=jsonl([{"prompt": "x\u0000"}]), headers=ADMIN
        )
        assert prompts.status_code == 422 and prompts.json()["detail"].startswith("p.jsonl: record 1: field 'prompt'")
        responses = client.post(
            f"/api/admin/projects/{pid}/responses?filename=r.jsonl",
            content=jsonl([{"prompt": "new", "responses": ["a", "b\u0000"]}]),
            headers=ADMIN,
        )
        assert responses.status_code == 422 and responses.json()["detail"].startswith("r.jsonl:1: field 'responses'")
        ann = Labeler(application, "ann")
        queue = {a["kind"]: a["assignment_id"] for a in ann.request("GET", "/api/queue").json()["assignments"]}
        for method, url, body, field in [
            (
                "POST",
                f"/api/assignments/{queue['demonstration']}/submit",
                {"demonstration": "hi\u0000"},
                "demonstration",
            ),
            ("PUT", f"/api/assignments/{queue['demonstration']}/draft", {"demonstration": "\u0000"}, "demonstration"),
            ("POST", "/api/admin/labelers", {"username": "zed", "password": "pass\u0000word"}, "password"),
        ]:
            if "admin" in url:
                response = client.request(method, url, json=body, headers=ADMIN)
            else:
                response = ann.request(method, url, json=body)
            assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}: "), response.text
        generate = client.post(f"/api/admin/projects/{pid}/generate", json={"checkpoint": "/tmp/\u0000"}, headers=ADMIN)
        assert generate.status_code == 422 and generate.json()["detail"].startswith("checkpoint: ")
        assert count(application, Label) == 0 and count(application, Prompt) == 1 and count(application, User) == 1
        with application.state.sessionmaker() as db:
            assert db.scalar(sql_select(func.count()).select_from(Project)) == 1
    finally:
        application.state.engine.dispose()


# ----- uploads that were 500s -----


@pytest.mark.parametrize(
    "query, content, status, detail",
    [
        ("?filename=..", b'{"prompt": "a"}\n', 422, "filename: '..' is not a file name"),
        ("?filename=" + "a" * 300, b'{"prompt": "a"}\n', 422, "filename: 300 characters; 1 to 200"),
        ("?filename=x%2F..%2Fy", b'{"prompt": "a"}\n', 422, "filename: a file name without"),
        (
            "?filename=deep.jsonl",
            b"[" * 100_000 + b"]" * 100_000 + b"\n",
            422,
            "deep.jsonl:1: JSON nested too deeply",
        ),
    ],
)
def test_upload_inputs_that_were_500s_are_4xx(app, query, content, status, detail):
    client = TestClient(app)
    pid = client.post("/api/admin/projects", json={"name": "u"}, headers=ADMIN).json()["id"]
    for kind in ("prompts", "responses"):
        response = client.post(f"/api/admin/projects/{pid}/{kind}{query}", content=content, headers=ADMIN)
        assert response.status_code == status and response.json()["detail"].startswith(detail), response.text
    assert count(app, Prompt) == 0


def test_deeply_nested_json_request_bodies_are_4xx(app):
    deep = b'{"username": "a", "password": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = TestClient(app).post("/api/login", content=deep, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500


# ----- drafts and idempotency keys -----


@pytest.fixture
def ranking(app):
    setup_project(
        TestClient(app),
        prompts=list(RESPONSES),
        responses=RESPONSES,
        labelers=("ann",),
        kinds=("ranking", "demonstration"),
    )
    ann = Labeler(app, "ann")
    queue = {a["kind"]: a["assignment_id"] for a in ann.request("GET", "/api/queue").json()["assignments"]}
    return ann, queue


@pytest.mark.parametrize(
    "kind, draft, detail",
    [
        ("ranking", {"ranking": [9, 9, 9, 9]}, "ranking: 'ranking' index 9 is out of range for 4 responses"),
        ("ranking", {"ranking": [1, [0, 1]]}, "ranking: 'ranking' lists response 1 twice"),
        ("ranking", {"ranking": [[], 1]}, "ranking: an empty group"),
        ("ranking", {"ranking": [-1]}, "ranking: 'ranking' index -1 is out of range"),
        ("ranking", {"demonstration": "x"}, "demonstration: a ranking task takes"),
        ("demonstration", {"ranking": [0]}, "ranking: a demonstration task takes"),
    ],
)
def test_drafts_are_validated(app, ranking, kind, draft, detail):
    ann, queue = ranking
    response = ann.request("PUT", f"/api/assignments/{queue[kind]}/draft", json=draft)
    assert response.status_code == 422 and response.json()["detail"].startswith(detail), response.text
    assert ann.request("GET", f"/api/assignments/{queue[kind]}").json()["draft"] is None


def test_an_unfinished_draft_is_kept(app, ranking):
    ann, queue = ranking
    ok = ann.request("PUT", f"/api/assignments/{queue['ranking']}/draft", json={"ranking": [2, [0, 3]], "quality": 4})
    assert ok.status_code == 200 and ok.json()["status"] == "draft"


def test_a_reused_idempotency_key_with_another_answer_is_409(app, ranking):
    ann, queue = ranking
    url, key = f"/api/assignments/{queue['ranking']}/submit", {"Idempotency-Key": "k-1"}
    first = ann.request("POST", url, json={"ranking": [0, 1, 2, 3], "flags": ["harmful"]}, headers=key)
    assert first.status_code == 201
    same = ann.request("POST", url, json={"flags": ["harmful", "harmful"], "ranking": [0, 1, 2, 3]}, headers=key)
    assert same.status_code == 200 and same.json()["replayed"]  # the same answer: a replay
    for other in (
        {"ranking": [3, 2, 1, 0]},
        {"ranking": [0, 1, 2, 3]},
        {"ranking": [0, 1, 2, 3], "flags": ["harmful"], "quality": 2},
    ):
        response = ann.request("POST", url, json=other, headers=key)
        assert response.status_code == 409 and "different answer" in response.json()["detail"], other
    assert count(app, Label) == 1
