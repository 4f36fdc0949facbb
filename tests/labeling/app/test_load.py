"""Nothing lost, nothing doubled: 1,000 concurrent submissions from 50 labelers (an async client against a real
`prefer serve` process on 127.0.0.1, one worker), on SQLite and on PostgreSQL; retries with the same idempotency
key add nothing; a server killed with SIGKILL in the middle of the load and restarted has every acknowledged
submission, and retrying the unacknowledged ones ends with exactly 1,000 labels.

`pytest -s tests/labeling/app/test_load.py` prints the README's figures (they depend on the machine)."""

import asyncio
import os
import random
import signal
import time

import httpx
from serve_testing import ADMIN, PASSWORD, db_url, jsonl, postgres_url, server  # noqa: F401 (fixtures)
from sqlalchemy import func, select

from prefer.labeling.app.db import make_engine, make_sessionmaker
from prefer.labeling.app.models import Assignment, Label

LABELERS, PER_LABELER, K = 50, 20, 4


def setup_load(base: str) -> None:
    """50 labelers x 20 ranking tasks of K = 4 responses: 1,000 assignments, through the admin API."""
    with httpx.Client(base_url=base, headers=ADMIN, timeout=120) as client:
        pid = client.post("/api/admin/projects", json={"name": "load"}).json()["id"]
        prompts = [f"prompt {i}" for i in range(LABELERS * PER_LABELER)]
        body = jsonl({"prompt": p, "responses": [f"{p} response {j}" for j in range(K)]} for p in prompts)
        assert client.post(f"/api/admin/projects/{pid}/responses", content=body).status_code == 200
        for i in range(LABELERS):
            assert (
                client.post("/api/admin/labelers", json={"username": f"l{i:02d}", "password": PASSWORD}).status_code
                == 201
            )
        created = client.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "ranking", "overlap": 1}).json()
        assert created == {"tasks_created": 1000, "assignments_created": 1000}


def ranking_for(aid: int) -> list:
    """A different, checkable answer per assignment (with a tie for every third)."""
    order = list(range(K))
    random.Random(aid).shuffle(order)
    return [order[0], [order[1], order[2]], order[3]] if aid % 3 == 0 else order


async def login(base: str, i: int) -> tuple[httpx.AsyncClient, list[int]]:
    """One labeler: its own client (cookie jar) with the CSRF header, and its assignment ids."""
    client = httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=PER_LABELER))
    response = await client.post("/api/login", json={"username": f"l{i:02d}", "password": PASSWORD})
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    ids = [a["assignment_id"] for a in (await client.get("/api/queue")).json()["assignments"]]
    assert len(ids) == PER_LABELER
    return client, ids


async def login_all(base: str) -> list[tuple[httpx.AsyncClient, list[int]]]:
    return list(await asyncio.gather(*(login(base, i) for i in range(LABELERS))))


async def submit(client: httpx.AsyncClient, aid: int, retries: int = 0) -> httpx.Response:
    """A client that, like the labeling page, retries a request whose reply was lost with the same key (a
    kept-alive connection the server closed meanwhile is such a case)."""
    for attempt in range(retries + 1):
        try:
            return await client.post(
                f"/api/assignments/{aid}/submit",
                json={"ranking": ranking_for(aid)},
                headers={"Idempotency-Key": f"submit-{aid}"},
            )
        except httpx.TransportError:
            if attempt == retries:
                raise


async def fire(labelers, on_ack=None, retries=0) -> tuple[dict[int, int], int]:
    """Every submission at once; -> ({assignment: label id} acknowledged with 201/200, failed count)."""
    acknowledged, failed = {}, 0

    async def one(client, aid):
        nonlocal failed
        try:
            response = await submit(client, aid, retries)
        except httpx.TransportError:
            failed += 1
            return
        assert response.status_code in (200, 201), response.text
        acknowledged[aid] = response.json()["label_id"]
        if on_ack:
            on_ack(len(acknowledged))

    await asyncio.gather(*(one(client, aid) for client, ids in labelers for aid in ids))
    return acknowledged, failed


def stored(url: str) -> dict:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as db:
            labels = list(db.execute(select(Label.assignment_id, Label.id, Label.ranking, Label.version)))
            return {
                "labels": len(labels),
                "assignments_labelled": len({a for a, *_ in labels}),
                "by_assignment": {a: (i, r) for a, i, r, _ in labels},
                "max_version": max((v for *_, v in labels), default=0),
                "submitted": db.scalar(
                    select(func.count()).select_from(Assignment).where(Assignment.status == "submitted")
                ),
            }
    finally:
        engine.dispose()


def check_answers(state: dict, acknowledged: dict[int, int]) -> None:
    for aid, label_id in acknowledged.items():
        assert state["by_assignment"][aid] == (label_id, ranking_for(aid)), aid


def test_1000_concurrent_submissions_from_50_labelers(db_url):
    async def run(base):
        labelers = await login_all(base)
        start = time.perf_counter()
        acknowledged, failed = await fire(labelers, retries=3)
        seconds = time.perf_counter() - start
        # Retries of 100 of them with the same keys: the same label back, nothing written.
        retried = [(client, aid) for client, ids in labelers for aid in ids[:2]]
        replies = await asyncio.gather(*(submit(client, aid, retries=3) for client, aid in retried))
        for client, _ in labelers:
            await client.aclose()
        return acknowledged, failed, seconds, retried, replies

    with server(db_url) as (base, _):
        setup_load(base)
        acknowledged, failed, seconds, retried, replies = asyncio.run(run(base))
    assert failed == 0 and len(acknowledged) == 1000
    assert all(r.status_code == 200 and r.json()["replayed"] for r in replies)
    assert [r.json()["label_id"] for r in replies] == [acknowledged[aid] for _, aid in retried]
    state = stored(db_url)
    assert state["labels"] == state["assignments_labelled"] == state["submitted"] == 1000
    assert state["max_version"] == 1  # no assignment got a second label
    check_answers(state, acknowledged)
    backend = db_url.split(":", 1)[0]
    print(
        f"\n[load] {backend}: {len(acknowledged)} concurrent submissions from {LABELERS} labelers in {seconds:.2f} s "
        f"= {len(acknowledged) / seconds:.0f} submissions/s (1 server process); stored {state['labels']} labels, "
        f"0 duplicates; {len(replies)} retries with the same key: {len(replies)} replayed, 0 new labels"
    )


def test_sigkill_mid_load_loses_no_acknowledged_submission(db_url, tmp_path):
    kill_after = 300

    async def run_until_killed(base, process):
        labelers = await login_all(base)

        def on_ack(n):
            if n == kill_after and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)  # in the middle of the load, requests in flight

        acknowledged, failed = await fire(labelers, on_ack)
        for client, _ in labelers:
            await client.aclose()
        return acknowledged, failed

    with server(db_url) as (base, process):
        setup_load(base)
        acknowledged, failed = asyncio.run(run_until_killed(base, process))
        assert process.wait(10) == -signal.SIGKILL
    port = int(base.rsplit(":", 1)[1])
    after_crash = stored(db_url)
    assert kill_after <= len(acknowledged) < 1000 and failed == 1000 - len(acknowledged)
    check_answers(after_crash, acknowledged)  # every acknowledged submission is there, with its answer

    async def retry_the_rest():
        labelers = await login_all(base)  # sessions survived too, but log in as a restarted client would
        todo = [(client, aid) for client, ids in labelers for aid in ids if aid not in acknowledged]
        replies = await asyncio.gather(*(submit(client, aid, retries=3) for client, aid in todo))
        for client, _ in labelers:
            await client.aclose()
        return replies

    with server(db_url, port=port) as _:
        replies = asyncio.run(retry_the_rest())
    replayed = sum(r.status_code == 200 for r in replies)
    assert all(r.status_code in (200, 201) for r in replies)
    final = stored(db_url)
    assert final["labels"] == final["assignments_labelled"] == 1000 and final["max_version"] == 1
    assert replayed == after_crash["labels"] - len(acknowledged)  # committed but unacknowledged: replayed, not doubled
    backend = db_url.split(":", 1)[0]
    acked, new = len(acknowledged), len(replies) - replayed
    print(f"\n[crash] {backend}: SIGKILL at the {kill_after}th acknowledgement; {acked} acknowledged in all (replies")
    print(f"  already sent), {failed} unanswered (in flight or unsent); after restart {after_crash['labels']} stored,")
    print(f"  {acked} of {acked} acknowledged present (0 lost); retrying the other {len(replies)} with their keys:")
    print(f"  {replayed} replayed (committed before the kill), {new} new; final {final['labels']} labels, 0 duplicates")
