"""Shared pieces of the labeling-app tests: an app on a fresh SQLite file, labelers with their own cookies and CSRF
tokens, a real `prefer serve` process on 127.0.0.1, a throwaway PostgreSQL database, and a tiny checkpoint.

A module, not a conftest.py: other tests import tests/conftest.py as `conftest`, and a second one would shadow it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the labeling app needs the serve extra: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from prefer.labeling.app.db import make_engine, upgrade  # noqa: E402
from prefer.labeling.app.server import create_app  # noqa: E402

TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[3]
PASSWORD = "correct horse battery"


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def make_app(url: str):
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return create_app(url, TOKEN, hash_profile="test")


@pytest.fixture
def app(tmp_path):
    application = make_app(str(tmp_path / "labels.db"))
    yield application
    application.state.engine.dispose()


class Labeler:
    """One labeler's browser: its own cookie jar and CSRF token."""

    def __init__(self, app, username: str, password: str = PASSWORD):
        self.client = TestClient(app)
        self.username = username
        response = self.client.post("/api/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        self.csrf = response.json()["csrf_token"]

    def request(self, method: str, url: str, **kwargs):
        headers = {"X-CSRF-Token": self.csrf, **kwargs.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kwargs)


def setup_project(
    client, *, name="p", prompts, responses=None, labelers=("ann", "bob"), overlap=1, kinds=("ranking",)
) -> int:
    """Project + prompts (+ {"prompt", "responses"}) + labeler accounts + tasks, all through the admin API."""
    project = client.post("/api/admin/projects", json={"name": name}, headers=ADMIN)
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    assert (
        client.post(
            f"/api/admin/projects/{pid}/prompts", content=jsonl({"prompt": p} for p in prompts), headers=ADMIN
        ).status_code
        == 200
    )
    if responses:
        r = client.post(
            f"/api/admin/projects/{pid}/responses",
            headers=ADMIN,
            content=jsonl({"prompt": p, "responses": rs} for p, rs in responses.items()),
        )
        assert r.status_code == 200, r.text
    existing = {u["username"] for u in client.get("/api/admin/labelers", headers=ADMIN).json()["labelers"]}
    for username in labelers:
        if username not in existing:
            r = client.post("/api/admin/labelers", json={"username": username, "password": PASSWORD}, headers=ADMIN)
            assert r.status_code == 201, r.text
    for kind in kinds:
        r = client.post(
            f"/api/admin/projects/{pid}/tasks",
            headers=ADMIN,
            json={"kind": kind, "overlap": overlap, "labelers": list(labelers)},
        )
        assert r.status_code == 201, r.text
    return pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(
    db_url: str,
    *,
    port: int | None = None,
    workers: int = 1,
    log=None,
    log_level: str = "warning",
    hash_profile: str = "test",
):
    """`prefer serve` as a real process on 127.0.0.1; yields (base_url, process). `hash_profile` "test" is a cheap
    password hash for tests; bench/app_latency.py times the server with "standard"."""
    port = port or free_port()
    env = {**os.environ, "PREFER_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefer",
            "serve",
            "--db",
            db_url,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--password-hash",
            hash_profile,
            "--log-level",
            log_level,
        ],
        env=env,
        cwd=REPO,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(base + "/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"prefer serve did not start (exit code {process.poll()})")
            time.sleep(0.2)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ----- PostgreSQL: a real server, from PREFER_TEST_POSTGRES_URL (.ci/run starts a throwaway cluster) -----

POSTGRES_HOWTO = (
    "PostgreSQL tests need a server: set PREFER_TEST_POSTGRES_URL=postgresql://USER@127.0.0.1:PORT/postgres "
    "(.ci/run starts a throwaway cluster and sets it; see .ci/postgres)"
)


def _unavailable(reason: str):
    if os.environ.get("PREFER_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PREFER_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(f"{reason}; {POSTGRES_HOWTO}")


@pytest.fixture
def postgres_url():
    """A fresh database on the test server for one test, dropped afterwards."""
    base = os.environ.get("PREFER_TEST_POSTGRES_URL")
    if not base:
        _unavailable("PREFER_TEST_POSTGRES_URL is not set")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"prefer_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        _unavailable(f"no PostgreSQL server at PREFER_TEST_POSTGRES_URL ({str(error).strip()[:200]})")
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user input
    yield url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test on SQLite (a file) and on PostgreSQL (a real server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres_url")


def build_tiny_checkpoint(path: Path) -> Path:
    """A tiny GPT-2 and BPE tokenizer built here (no download), for responses generated from a checkpoint."""
    import torch

    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model

    texts = [
        "The cat sat on the mat. The dog ran to the park.\n",
        "Write a haiku about the sea and the sun.\n",
        "Explain why the sky is blue, briefly.\n",
    ] * 40
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=128)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "lm")


# ChatML, as SmolLM2-Instruct writes it (shortened: no default system prompt), as tests/evaluation/test_prompts.py
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_checkpoint(tmp_path_factory):
    """`tiny_checkpoint` with a chat template: ChatML's tokens and template on its tokenizer, as an instruction
    model (SmolLM2-135M-Instruct) has them."""
    import torch

    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model

    path = tmp_path_factory.mktemp("chat_checkpoint") / "lm"
    texts = ["Write a haiku about the sea and the sun.\n", "Explain why the sky is blue, briefly.\n"] * 40
    tokenizer = train_tokenizer(texts, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=128)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
