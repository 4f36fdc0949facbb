"""A labeler's request latency while the labeling app is under attack and busy (issue 25).

    python bench/app_latency.py --db sqlite
    python bench/app_latency.py --db postgresql://prefer@127.0.0.1:55432/postgres
    python bench/app_latency.py --db sqlite --model smollm2-135m-instruct   # the real 135M model samples

Starts `prefer serve` as a real process on 127.0.0.1 (one worker, argon2id's standard cost unless
--password-hash test), on a fresh SQLite file or on a fresh database that it creates on the given PostgreSQL
server (and drops afterwards). Through the admin API it makes one labeler, `ann`, with `--tasks` ranking tasks of 4
responses, and two more projects of `--generate` prompts each for the generation jobs. Then ann, logged in and
using a real HTTP client (httpx), repeats: GET /api/queue, POST a submission (with an Idempotency-Key), pause
`--pause` s. Each request is timed, in four phases:

- **quiet**: nothing else runs (`--rounds` rounds).
- **logins**: `--attackers` (40) concurrent wrong logins, repeated for the whole phase. Attacker i sends from its
  own address (`X-Forwarded-For`, which uvicorn trusts from 127.0.0.1; new addresses in each phase) and guesses a
  new username each time, except that a quarter of them guess ann's password; each waits out a 429's
  `Retry-After`.
- **generation**: a job that samples 4 responses for each of `--generate` (200) prompts from a checkpoint
  (`POST .../generate`, 202; the admin polls its progress every second). The labeler goes on until it ends.
- **both**: the attack and a second generation job at once.

For each phase it prints n, median, p95 and max latency of the queue requests and of the submissions, their
non-2xx replies, the attack's 401s and 429s and the job's time. Any 5xx anywhere (labeler, attackers, admin) and
any transport error fails the run; so does a submission acknowledged but not stored exactly once, checked in the
database at the end. The client runs on the same machine as the server: both share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "labeling" / "app"))
from serve_testing import ADMIN, build_tiny_checkpoint, server  # noqa: E402 -- the tests' `prefer serve` process, started the same way

PASSWORD = "correct horse battery"
LABELER = "ann"
K = 4  # responses per ranking task and per generated prompt
PHASES = ("quiet", "logins", "generation", "both")


# ----------------------------------------------------------------------------------------------- server and setup


@contextlib.contextmanager
def fresh_database(db: str):
    """`sqlite`: a new file in a temporary folder. A postgresql:// URL: a new database on that server, dropped after."""
    if db == "sqlite":
        with tempfile.TemporaryDirectory(prefix="prefer-latency-") as folder:
            yield f"sqlite:///{Path(folder) / 'labels.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(db)
    name = f"prefer_bench_{uuid.uuid4().hex[:12]}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not user input
    try:
        yield url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def ok(response: httpx.Response, *codes: int) -> dict:
    if response.status_code not in (codes or (200, 201)):
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()


def setup(base: str, *, tasks: int, generate: int) -> list[int]:
    """ann's project (`tasks` ranking tasks of K responses, all ann's) and two projects of `generate` prompts without
    responses, for the two generation jobs; -> the two generation projects' ids."""
    with httpx.Client(base_url=base, headers=ADMIN, timeout=120) as client:
        ok(client.post("/api/admin/labelers", json={"username": LABELER, "password": PASSWORD}))
        pid = ok(client.post("/api/admin/projects", json={"name": "labeling"}))["id"]
        prompts = [f"Labeling prompt {i}: explain something briefly." for i in range(tasks)]
        body = jsonl({"prompt": p, "responses": [f"{p} (response {j})" for j in range(K)]} for p in prompts)
        ok(client.post(f"/api/admin/projects/{pid}/responses", content=body))
        created = ok(client.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "ranking", "labelers": [LABELER]}))
        assert created["assignments_created"] == tasks, created
        projects = []
        for phase in ("generation", "both"):
            gid = ok(client.post("/api/admin/projects", json={"name": f"generated during {phase}"}))["id"]
            body = jsonl({"prompt": f"Generation prompt {i} ({phase}): say something."} for i in range(generate))
            ok(client.post(f"/api/admin/projects/{gid}/prompts", content=body))
            projects.append(gid)
        return projects


# ------------------------------------------------------------------------------------------------------- the load


@dataclass
class Phase:
    name: str
    queue: list[float] = field(default_factory=list)  # seconds
    submit: list[float] = field(default_factory=list)
    labeler_non_2xx: dict[int, int] = field(default_factory=dict)
    attack: dict[int, int] = field(default_factory=dict)  # status -> count
    job_seconds: float | None = None
    job: dict | None = None
    seconds: float = 0.0
    load: float = 0.0  # the machine's 1-minute load average at the phase's end (this run's threads count too)


class ServerError(AssertionError):
    """A 5xx (or a transport error) anywhere: what the benchmark exists to rule out."""


def check(response: httpx.Response, who: str) -> httpx.Response:
    if response.status_code >= 500:
        raise ServerError(f"{who}: {response.request.method} {response.request.url.path} -> {response.status_code}")
    return response


class Labeler:
    """ann's browser: a logged-in client that times its queue requests and submissions."""

    def __init__(self, base: str):
        self.client = httpx.AsyncClient(base_url=base, timeout=300)
        self.todo: list[int] = []
        self.acknowledged: dict[int, int] = {}  # assignment id -> label id

    async def login(self) -> None:
        reply = ok(await self.client.post("/api/login", json={"username": LABELER, "password": PASSWORD}))
        self.client.headers["X-CSRF-Token"] = reply["csrf_token"]
        queue = ok(await self.client.get("/api/queue"))["assignments"]
        self.todo = sorted(a["assignment_id"] for a in queue if a["status"] != "submitted")

    async def timed(self, phase: Phase, kind: str, method: str, url: str, **kwargs) -> httpx.Response:
        start = time.perf_counter()
        response = check(await self.client.request(method, url, **kwargs), "labeler")
        getattr(phase, kind).append(time.perf_counter() - start)
        if not 200 <= response.status_code < 300:
            phase.labeler_non_2xx[response.status_code] = phase.labeler_non_2xx.get(response.status_code, 0) + 1
        return response

    async def work(self, phase: Phase, *, rounds: int, until: asyncio.Event, pause: float) -> None:
        """Queue, submit, pause; at least `rounds` times and until `until` is set (or the tasks run out)."""
        done = 0
        while (done < rounds or not until.is_set()) and self.todo:
            await self.timed(phase, "queue", "GET", "/api/queue")
            aid = self.todo.pop(0)
            answer = {"ranking": [(aid + j) % K for j in range(K)]}  # a different, checkable answer per task
            reply = await self.timed(
                phase,
                "submit",
                "POST",
                f"/api/assignments/{aid}/submit",
                json=answer,
                headers={"Idempotency-Key": f"s{aid}"},
            )
            if reply.status_code in (200, 201):
                self.acknowledged[aid] = reply.json()["label_id"]
            done += 1
            await asyncio.sleep(pause)
        if not self.todo:
            print(f"[latency] {phase.name}: ann ran out of tasks (raise --tasks)", flush=True)


async def attacker(base: str, i: int, phase: Phase, stop: asyncio.Event) -> None:
    """Wrong logins from one address until `stop`: a new username each time (a quarter of the attackers guess ann's
    password instead), waiting out each 429's Retry-After as a patient script would. Each phase's attackers come
    from fresh addresses (10.PHASE.x.y), so an earlier phase's back-off does not slow them."""
    address = f"10.{PHASES.index(phase.name)}.{i // 250}.{i % 250 + 1}"
    async with httpx.AsyncClient(base_url=base, timeout=300, headers={"X-Forwarded-For": address}) as client:
        n = 0
        while not stop.is_set():
            username = LABELER if i % 4 == 0 else f"intruder-{phase.name}-{i}-{n}"
            response = check(
                await client.post("/api/login", json={"username": username, "password": f"guess{n}"}), "attacker"
            )
            phase.attack[response.status_code] = phase.attack.get(response.status_code, 0) + 1
            n += 1
            if response.status_code == 429:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), float(response.headers["retry-after"]))


async def generation(base: str, project: int, checkpoint: str, settings: dict, phase: Phase) -> None:
    """Start a job (202) and poll it every second as the admin's page does, until it ends."""
    async with httpx.AsyncClient(base_url=base, headers=ADMIN, timeout=300) as admin:
        start = time.perf_counter()
        body = {"checkpoint": checkpoint, **settings}
        job = ok(check(await admin.post(f"/api/admin/projects/{project}/generate", json=body), "admin"), 202)
        while job["status"] in ("queued", "running"):
            await asyncio.sleep(1.0)
            job = ok(check(await admin.get(f"/api/admin/generations/{job['generation_id']}"), "admin"))
        phase.job_seconds = time.perf_counter() - start
        phase.job = job
        if job["status"] != "done":
            raise RuntimeError(f"generation {job['status']}: {job['error']}")


async def run_phase(name: str, base: str, labeler: Labeler, config: dict, project: int | None) -> Phase:
    phase, stop, done = Phase(name), asyncio.Event(), asyncio.Event()
    start = time.perf_counter()
    attack = []
    if name in ("logins", "both"):
        n = config["attackers"]
        attack = [asyncio.create_task(attacker(base, i, phase, stop)) for i in range(n)]
        await asyncio.sleep(0.5)  # let the storm build before timing the labeler
    job = None
    if project is not None:
        job = asyncio.create_task(generation(base, project, config["checkpoint"], config["settings"], phase))
        job.add_done_callback(lambda _: done.set())
    else:
        done.set()
    try:
        await labeler.work(phase, rounds=config["rounds"], until=done, pause=config["pause"])
        if job is not None:
            await job
    finally:
        stop.set()
        results = await asyncio.gather(*attack, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    phase.seconds = time.perf_counter() - start
    phase.load = os.getloadavg()[0]
    return phase


def stored_once(db_url: str, acknowledged: dict[int, int]) -> None:
    """Every acknowledged submission is in the database exactly once, with its label id and answer."""
    from sqlalchemy import select

    from prefer.labeling.app.db import make_engine, make_sessionmaker
    from prefer.labeling.app.models import Label

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as db:
            labels = list(db.execute(select(Label.assignment_id, Label.id, Label.ranking)))
    finally:
        engine.dispose()
    by_assignment = {}
    for aid, label_id, ranking in labels:
        assert aid not in by_assignment, f"assignment {aid} has two labels"
        by_assignment[aid] = (label_id, ranking)
    assert set(by_assignment) == set(acknowledged), "labels stored differ from those acknowledged"
    for aid, label_id in acknowledged.items():
        assert by_assignment[aid] == (label_id, [(aid + j) % K for j in range(K)]), aid


def run(db_url: str, *, checkpoint: str, phases=PHASES, **config) -> tuple[list[Phase], dict[int, int]]:
    """The whole benchmark on one (fresh) database; -> the phases' measurements and ann's acknowledged submissions
    ({assignment id: label id}), each checked stored exactly once."""
    config = {"attackers": 40, "rounds": 40, "pause": 0.2, "tasks": 400, "generate": 200, **config}
    config["checkpoint"] = checkpoint
    settings = {"num_responses": K, "max_new_tokens": config.pop("max_new_tokens", 32), "seed": 0, "device": "cpu"}
    config["settings"] = settings
    with server(db_url, hash_profile=config.get("hash_profile", "standard"), log=config.get("log")) as (base, _):
        projects = dict(zip(("generation", "both"), setup(base, tasks=config["tasks"], generate=config["generate"])))

        async def main() -> tuple[list[Phase], dict]:
            labeler = Labeler(base)
            try:
                await labeler.login()
                results = []
                for name in phases:
                    results.append(await run_phase(name, base, labeler, config, projects.get(name)))
                    if config.get("on_phase"):
                        config["on_phase"](results[-1])
                return results, labeler.acknowledged
            finally:
                await labeler.client.aclose()

        results, acknowledged = asyncio.run(main())
    stored_once(db_url, acknowledged)
    return results, acknowledged


# ------------------------------------------------------------------------------------------------------ reporting


def summary(seconds: list[float]) -> str:
    if not seconds:
        return "n 0"
    ms = sorted(s * 1000 for s in seconds)
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[18] if len(ms) > 1 else ms[0]
    return f"n {len(ms):3d}  median {statistics.median(ms):7.0f}  p95 {p95:7.0f}  max {ms[-1]:7.0f} ms"


def report(backend: str, results: list[Phase]) -> None:
    for phase in results:
        print(f"[latency] {backend} {phase.name} ({phase.seconds:.0f} s, load average {phase.load:.1f}):", flush=True)
        print(f"  queue   {summary(phase.queue)}", flush=True)
        print(f"  submit  {summary(phase.submit)}", flush=True)
        extra = [f"labeler non-2xx {phase.labeler_non_2xx or 0}"]
        if phase.attack:
            extra.append(
                f"wrong logins {sum(phase.attack.values())}: "
                + ", ".join(f"{n}x{s}" for s, n in sorted(phase.attack.items()))
            )
        if phase.job:
            job = phase.job
            extra.append(
                f"generation {job['prompts_done']}/{job['prompts_total']} prompts in {phase.job_seconds:.0f} s"
            )
        print("  " + "; ".join(extra), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite", help="sqlite (a fresh file) or a postgresql:// server URL")
    parser.add_argument("--model", help="a checkpoint directory or named source (default: a tiny model built here)")
    parser.add_argument("--attackers", type=int, default=40, help="concurrent wrong logins (default: 40)")
    parser.add_argument("--generate", type=int, default=200, help="prompts per generation job (default: 200)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per sampled response (default: 32)")
    parser.add_argument("--rounds", type=int, default=40, help="labeler rounds per phase, at least (default: 40)")
    parser.add_argument("--pause", type=float, default=0.2, help="labeler's pause between rounds, s (default: 0.2)")
    parser.add_argument("--tasks", type=int, default=400, help="ann's ranking tasks (default: 400)")
    parser.add_argument("--password-hash", default="standard", choices=["standard", "test"])
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    args = parser.parse_args()
    phases = tuple(args.phases.split(","))
    if not set(phases) <= set(PHASES):
        parser.error(f"--phases: of {','.join(PHASES)}")
    print(
        f"[latency] load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} at start, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="prefer-latency-ckpt-") as folder:
        if args.model:
            from prefer.models.sources import resolve_model_path

            checkpoint = str(resolve_model_path(args.model, field="--model"))
        else:
            checkpoint = str(build_tiny_checkpoint(Path(folder) / "lm"))
        with fresh_database(args.db) as db_url:
            backend = db_url.split(":", 1)[0]
            run(
                db_url,
                on_phase=lambda phase: report(backend, [phase]),
                checkpoint=checkpoint,
                phases=phases,
                attackers=args.attackers,
                generate=args.generate,
                max_new_tokens=args.max_new_tokens,
                rounds=args.rounds,
                pause=args.pause,
                tasks=args.tasks,
                hash_profile=args.password_hash,
            )
    print(
        f"[latency] no 5xx; every acknowledged submission stored once; load average {os.getloadavg()[0]:.2f} "
        f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} at the end",
        flush=True,
    )


if __name__ == "__main__":
    main()
