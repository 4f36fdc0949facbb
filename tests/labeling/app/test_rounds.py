"""Collection rounds from the current policy (issue 25): `prefer round` samples K responses per prompt from a
checkpoint, exactly as the app's generation job does, into a new batch of tasks of an existing project; the loop
label -> prefer export -> prefer reward -> prefer ppo -> the next round runs end to end on a tiny model."""

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_testing import ADMIN, PASSWORD, db_url, jsonl, make_app, postgres_url, server, tiny_checkpoint  # noqa: F401

from prefer.cli import main

SAMPLING = ["--num-responses", "3", "--max-new-tokens", "6", "--temperature", "1.0", "--seed", "0", "--device", "cpu"]
FIRST = ["Write a haiku about the sea.", "Explain why the sky is blue."]
SECOND = ["Explain why the sky is blue.", "The cat sat on the", "Name a dog."]  # one prompt of round 1 again


def _project(db_url: str, labelers=("ann", "bob")) -> None:
    """A project with labelers and no prompts yet (what the admin makes in the browser)."""
    app = make_app(db_url)
    try:
        client = TestClient(app)
        assert client.post("/api/admin/projects", json={"name": "policy"}, headers=ADMIN).status_code == 201
        for name in labelers:
            made = client.post("/api/admin/labelers", json={"username": name, "password": PASSWORD}, headers=ADMIN)
            assert made.status_code == 201
    finally:
        app.state.engine.dispose()


def _round(capsys, db_url, *args) -> dict:
    assert main(["round", "--db", db_url, "--project", "policy", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _rank_everything(base: str, username: str) -> int:
    client = httpx.Client(base_url=base)
    client.headers["X-CSRF-Token"] = client.post(
        "/api/login", json={"username": username, "password": PASSWORD}
    ).json()["csrf_token"]
    done = 0
    for item in client.get("/api/queue").json()["assignments"]:
        view = client.get(f"/api/assignments/{item['assignment_id']}").json()
        answer = {"ranking": [r["index"] for r in view["responses"]]} if view["kind"] == "ranking" else {"good": True}
        assert client.post(f"/api/assignments/{item['assignment_id']}/submit", json=answer).status_code == 201
        done += 1
    return done


def test_rounds_make_new_batches_of_tasks_on_both_databases(db_url, tiny_checkpoint, tmp_path, capsys):
    _project(db_url)
    (tmp_path / "first.jsonl").write_bytes(jsonl({"prompt": p} for p in FIRST))
    first = _round(
        capsys, db_url, "--checkpoint", str(tiny_checkpoint), "--prompts", str(tmp_path / "first.jsonl"), *SAMPLING
    )
    assert first["prompts_read"] == 2 and first["prompts_added"] == 2 and first["prompts_already_labeled"] == 0
    assert first["generation"]["prompts_with_responses"] == 2 and first["generation"]["responses_added"] == 6
    # two prompts -> two ranking tasks, each to one labeler, the least loaded first
    assert (first["tasks_created"], first["assignments_created"], len(first["task_ids"])) == (2, 2, 2)

    (tmp_path / "second.jsonl").write_bytes(jsonl({"prompt": p} for p in SECOND))
    second = _round(
        capsys,
        db_url,
        "--checkpoint",
        str(tiny_checkpoint),
        "--prompts",
        str(tmp_path / "second.jsonl"),
        "--kind",
        "binary",
        "--labelers",
        "bob",
        *SAMPLING,
        "--seed",
        "1",
    )
    # "Explain why the sky is blue." has a ranking task: its responses stay, and it is not sampled again.
    assert second["prompts_added"] == 2 and second["prompts_already_labeled"] == 1
    assert second["generation_id"] == first["generation_id"] + 1
    assert second["generation"]["prompts_with_responses"] == 2
    # binary: one task per response, 2 prompts x 3 responses, all to bob
    assert (second["tasks_created"], second["assignments_created"]) == (6, 6)
    assert set(second["task_ids"]).isdisjoint(first["task_ids"])

    with server(db_url) as (base, _):
        generations = httpx.get(f"{base}/api/admin/projects/1/generations", headers=ADMIN).json()["generations"]
        assert [(g["status"], g["checkpoint"], g["settings"]["seed"]) for g in generations] == [
            ("done", str(tiny_checkpoint), 1),
            ("done", str(tiny_checkpoint), 0),
        ]
        assert _rank_everything(base, "ann") + _rank_everything(base, "bob") == 8
    out = tmp_path / "export"
    assert main(["export", "--db", db_url, "--project", "policy", "--out", str(out)]) == 0
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    binary = [json.loads(line) for line in (out / "binary.jsonl").read_text().splitlines()]
    # each record names the round (the generation) its responses came from
    assert sorted(r["prompt"] for r in rankings) == sorted(FIRST)
    assert {tuple(r["provenance"]["generations"]) for r in rankings} == {(first["generation_id"],)}
    assert len(binary) == 6 and {tuple(r["provenance"]["generations"]) for r in binary} == {(second["generation_id"],)}


def test_a_round_is_refused_with_one_line(db_url, tiny_checkpoint, tmp_path, capsys):
    _project(db_url)
    command = ["round", "--db", db_url, "--project", "policy", *SAMPLING]
    assert main([*command, "--checkpoint", str(tmp_path)]) == 2  # no prompt yet
    assert "no prompt without a ranking or binary task" in capsys.readouterr().err
    assert main(["round", "--db", db_url, "--project", "nope", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "--project: no project named 'nope' (projects: ['policy'])" in capsys.readouterr().err
    (tmp_path / "p.jsonl").write_bytes(jsonl([{"prompt": "Hi."}]))
    assert main([*command, "--checkpoint", str(tmp_path / "missing"), "--prompts", str(tmp_path / "p.jsonl")]) == 2
    assert "checkpoint: " in capsys.readouterr().err
    assert main([*command, "--checkpoint", str(tiny_checkpoint), "--labelers", "zed"]) == 2
    assert "labelers: no active labeler(s) ['zed']" in capsys.readouterr().err


@pytest.mark.system  # a whole pipeline: round, labels, export, reward, ppo, round
def test_label_export_reward_ppo_then_the_next_round_from_the_new_policy(tiny_checkpoint, tmp_path, capsys):
    """The documented loop (docs/labeling-app.md), on SQLite: round 1 from the SFT model, labels, export, a reward
    model, a PPO policy, and round 2 sampled from that policy."""
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    _project(db, labelers=("ann",))
    (tmp_path / "prompts.jsonl").write_bytes(jsonl({"prompt": p} for p in FIRST))
    first = _round(
        capsys, db, "--checkpoint", str(tiny_checkpoint), "--prompts", str(tmp_path / "prompts.jsonl"), *SAMPLING
    )
    assert first["tasks_created"] == 2
    with server(db) as (base, _):
        assert _rank_everything(base, "ann") == 2
    assert main(["export", "--db", db, "--project", "policy", "--out", str(tmp_path / "round1")]) == 0
    common = ["runtime.progress=false", "runtime.device=cpu", "optimizer.lr=1e-3"]
    reward = [
        "reward",
        f"model.init_from={tiny_checkpoint}",
        f"data.rankings={tmp_path / 'round1' / 'rankings.jsonl'}",
        f"out_dir={tmp_path / 'rm'}",
        "data.validation_fraction=0",
        "train.epochs=1",
        "train.batch_size=1",
        "train.eval_every=1",
        "train.checkpoint_every=10",
    ]
    assert main([*reward, *common]) == 0
    ppo = [
        "ppo",
        f"model.init_from={tiny_checkpoint}",
        f"prompts={tmp_path / 'prompts.jsonl'}",
        f"reward.scorer=rm:{tmp_path / 'rm' / 'final'}",
        f"reward.model={tmp_path / 'rm' / 'final'}",
        f"out_dir={tmp_path / 'ppo'}",
        "train.iterations=1",
        "train.batch_size=2",
        "train.minibatch_size=2",
        "train.micro_batch_size=2",
        "train.epochs=1",
        "rollout.max_new_tokens=4",
        "train.checkpoint_every=1",
    ]
    assert main([*ppo, *common]) == 0
    capsys.readouterr()
    (tmp_path / "next.jsonl").write_bytes(jsonl([{"prompt": "The cat sat on the"}]))
    policy = tmp_path / "ppo" / "final"
    second = _round(capsys, db, "--checkpoint", str(policy), "--prompts", str(tmp_path / "next.jsonl"), *SAMPLING)
    assert second["tasks_created"] == 1 and second["generation"]["responses_added"] == 3
    with server(db) as (base, _):
        job = httpx.get(f"{base}/api/admin/generations/{second['generation_id']}", headers=ADMIN).json()
        assert job["checkpoint"] == str(policy) and job["status"] == "done"


def test_a_round_from_responses_sampled_elsewhere(db_url, tmp_path, capsys):
    _project(db_url)
    responses = {"Say hi.": ["hi", "hello", "hey"], "Name a colour.": ["red", "blue"]}
    (tmp_path / "r.jsonl").write_bytes(jsonl({"prompt": p, "responses": rs} for p, rs in responses.items()))
    result = _round(capsys, db_url, "--responses", str(tmp_path / "r.jsonl"), "--kind", "binary", "--overlap", "2")
    assert (result["prompts_with_responses"], result["responses_added"]) == (2, 5)
    assert (result["tasks_created"], result["assignments_created"]) == (5, 10)  # one per response, to ann and bob
