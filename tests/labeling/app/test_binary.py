"""Binary feedback (issue 25): a task kind where a labeler marks one response good or bad, with the ranking kind's
flags and quality score; drafts; a 422 naming the field on bad input; the export as TRL's unpaired preference
format `{"prompt", "completion", "label"}` that `prefer dpo dpo.loss=kto` reads, and the rankings as pairs in TRL's
conversational format too. Through a real `prefer serve` process and an HTTP client, on SQLite and PostgreSQL."""

import json

import httpx
import pytest
from serve_testing import ADMIN, PASSWORD, db_url, jsonl, postgres_url, server  # noqa: F401 (fixtures)

from prefer.cli import main
from prefer.data.feedback import read_feedback
from prefer.data.formats import read_rankings

RESPONSES = {
    "Say hi.": ["hi", "hello there"],
    "Name a colour.": ["red", "blue", "a colour"],
}


def _login(base: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=base)
    response = client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


def _setup(admin: httpx.Client) -> int:
    pid = admin.post("/api/admin/projects", json={"name": "thumbs"}).json()["id"]
    assert admin.post(f"/api/admin/projects/{pid}/prompts", content=jsonl({"prompt": p} for p in RESPONSES)).is_success
    uploaded = admin.post(
        f"/api/admin/projects/{pid}/responses",
        content=jsonl({"prompt": p, "responses": rs} for p, rs in RESPONSES.items()),
    )
    assert uploaded.status_code == 200, uploaded.text
    for name in ("ann", "bob"):
        assert admin.post("/api/admin/labelers", json={"username": name, "password": PASSWORD}).status_code == 201
    return pid


def test_binary_tasks_drafts_validation_and_export_on_both_databases(db_url, tmp_path):
    with server(db_url) as (base, _):
        admin = httpx.Client(base_url=base, headers=ADMIN)
        pid = _setup(admin)
        # One binary task per response (2 + 3 = 5), each to both labelers (overlap 2): 10 assignments.
        made = admin.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "binary", "overlap": 2})
        assert made.status_code == 201 and made.json() == {"tasks_created": 5, "assignments_created": 10}
        again = admin.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "binary", "overlap": 2})
        assert again.json() == {"tasks_created": 0, "assignments_created": 0}  # one binary task per response
        assert admin.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "ranking", "labelers": ["ann"]}).is_success
        assert admin.get(f"/api/admin/projects/{pid}/progress").json()["tasks"] == {
            "ranking": 2,
            "demonstration": 0,
            "binary": 5,
        }
        # The responses of a prompt with binary tasks are fixed: its labels refer to them.
        replaced = admin.post(
            f"/api/admin/projects/{pid}/responses", content=jsonl([{"prompt": "Say hi.", "responses": ["a", "b"]}])
        )
        assert replaced.status_code == 409 and "ranking or binary task" in replaced.json()["detail"]

        ann = _login(base, "ann")
        queue = ann.get("/api/queue").json()["assignments"]
        binary = [a for a in queue if a["kind"] == "binary"]
        assert len(binary) == 5 and len(queue) == 7
        shown = {}
        for item in binary:
            view = ann.get(f"/api/assignments/{item['assignment_id']}").json()
            assert view["kind"] == "binary" and len(view["responses"]) == 1
            [response] = view["responses"]
            assert RESPONSES[view["prompt"]][response["index"]] == response["text"]  # its position among them
            shown[(view["prompt"], response["text"])] = item["assignment_id"]
        assert len(shown) == 5  # every response once
        aid = shown[("Say hi.", "hello there")]

        # Drafts: an unfinished one (no verdict yet) and one with a verdict; the other kinds' fields are refused.
        assert ann.put(f"/api/assignments/{aid}/draft", json={"flags": ["harmful"]}).json()["status"] == "draft"
        assert ann.put(f"/api/assignments/{aid}/draft", json={"good": False, "quality": 2}).status_code == 200
        assert ann.get(f"/api/assignments/{aid}").json()["draft"]["good"] is False
        bad_draft = ann.put(f"/api/assignments/{aid}/draft", json={"ranking": [0, 1]})
        assert bad_draft.status_code == 422 and bad_draft.json()["detail"] == (
            "ranking: a binary task takes 'good', not 'ranking'"
        )

        # Bad answers: a 422 that names the field.
        for body, detail in (
            ({}, "good: a binary task needs 'good': true (thumbs up) or false (thumbs down)"),
            ({"good": None, "flags": ["harmful"]}, "good: a binary task needs"),
            ({"good": "yes"}, "good: "),
            ({"good": 1}, "good: "),
            ({"good": True, "demonstration": "better"}, "demonstration: a binary task takes 'good'"),
            ({"good": True, "flags": ["rude"]}, "flags."),
            ({"good": True, "quality": 8}, "quality: "),
        ):
            refused = ann.post(f"/api/assignments/{aid}/submit", json=body)
            assert refused.status_code == 422 and refused.json()["detail"].startswith(detail), (body, refused.text)
        ranking_aid = next(a["assignment_id"] for a in queue if a["kind"] == "ranking")
        wrong_kind = ann.post(f"/api/assignments/{ranking_aid}/submit", json={"ranking": [0, 1], "good": True})
        assert wrong_kind.status_code == 422
        assert wrong_kind.json()["detail"] == "good: a ranking task takes 'ranking', not 'good'"

        # Submit, replay, reuse a key for another answer, edit.
        key = {"Idempotency-Key": "k-1"}
        first = ann.post(
            f"/api/assignments/{aid}/submit", json={"good": True, "quality": 6, "flags": ["harmful"]}, headers=key
        )
        assert first.status_code == 201 and first.json()["version"] == 1
        replay = ann.post(
            f"/api/assignments/{aid}/submit", json={"good": True, "quality": 6, "flags": ["harmful"]}, headers=key
        )
        assert replay.status_code == 200 and replay.json()["replayed"] is True
        reused = ann.post(f"/api/assignments/{aid}/submit", json={"good": False}, headers=key)
        assert reused.status_code == 409
        edited = ann.post(f"/api/assignments/{aid}/submit", json={"good": False, "flags": ["made_up_facts"]})
        assert edited.status_code == 201 and edited.json()["version"] == 2
        label = ann.get(f"/api/assignments/{aid}").json()["label"]
        assert (label["good"], label["flags"], label["quality"], label["ranking"]) == (
            False,
            ["made_up_facts"],
            None,
            None,
        )
        assert ann.post(f"/api/assignments/{shown[('Name a colour.', 'blue')]}/submit", json={"good": True}).is_success
        assert ann.post(f"/api/assignments/{ranking_aid}/submit", json={"ranking": [1, 0]}).is_success

        bob = _login(base, "bob")
        bob_aid = next(
            a["assignment_id"]
            for a in bob.get("/api/queue").json()["assignments"]
            if bob.get(f"/api/assignments/{a['assignment_id']}").json()["responses"][0]["text"] == "red"
        )
        assert bob.post(f"/api/assignments/{bob_aid}/submit", json={"good": False}).status_code == 201

        exported = admin.get(f"/api/admin/projects/{pid}/export/binary.jsonl")
        assert exported.status_code == 200
        records = [json.loads(line) for line in exported.text.splitlines()]
        # ann: "hello there" (its last version: bad) and "blue" (good); bob: "red" (bad). Labels are JSON booleans.
        assert sorted((r["prompt"], r["completion"], r["label"], r["provenance"]["labeler"]) for r in records) == [
            ("Name a colour.", "blue", True, "ann"),
            ("Name a colour.", "red", False, "bob"),
            ("Say hi.", "hello there", False, "ann"),
        ]
        hello = next(r for r in records if r["completion"] == "hello there")
        assert hello["provenance"]["version"] == 2 and hello["provenance"]["flags"] == ["made_up_facts"]
        assert hello["provenance"]["response_index"] == 1
        assert all(type(r["label"]) is bool for r in records)

        conversational = admin.get(f"/api/admin/projects/{pid}/export/pairs_conversational.jsonl")
        [pair] = [json.loads(line) for line in conversational.text.splitlines()]
        # ann ranked the shuffled responses of one prompt [1, 0]: response 1 over response 0.
        prompt = pair["prompt"][0]["content"]
        assert pair["prompt"] == [{"role": "user", "content": prompt}]
        assert pair["chosen"] == [{"role": "assistant", "content": RESPONSES[prompt][1]}]
        assert pair["rejected"] == [{"role": "assistant", "content": RESPONSES[prompt][0]}]
        assert admin.get(f"/api/admin/projects/{pid}/export/nothing.jsonl").status_code == 422

    # `prefer export`: binary.jsonl is written by default (it has answers), pairs_conversational.jsonl on request,
    # and what it writes is what `prefer dpo dpo.loss=kto` reads (prefer.data.feedback).
    out = tmp_path / "export"
    assert main(["export", "--db", db_url, "--project", "thumbs", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["binary.jsonl", "pairs.jsonl", "rankings.jsonl"]
    feedback = read_feedback(out / "binary.jsonl")
    assert sorted((f.prompt, f.completion, f.label) for f in feedback) == [
        ("Name a colour.", "blue", True),
        ("Name a colour.", "red", False),
        ("Say hi.", "hello there", False),
    ]
    assert (
        main(["export", "--db", db_url, "--project", "thumbs", "--out", str(out), "--formats", "pairs_conversational"])
        == 0
    )
    [pair] = read_rankings(out / "pairs_conversational.jsonl")  # what prefer reward / prefer dpo read
    assert pair.prompt_messages == ({"role": "user", "content": pair.prompt_messages[0]["content"]},)
    assert [m[0]["role"] for m in pair.response_messages] == ["assistant", "assistant"]


@pytest.mark.browser
def test_the_labeling_page_judges_with_keys_and_buttons_and_restores_a_draft(browser, tmp_path):
    """Headless Chromium: `g` / `b` and the buttons set the verdict, Ctrl+S saves it as a draft that a reload
    restores, and Ctrl+Enter submits exactly what the page shows."""
    with server(f"sqlite:///{tmp_path / 'labels.db'}") as (base, _):
        admin = httpx.Client(base_url=base, headers=ADMIN)
        pid = _setup(admin)
        assert admin.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "binary", "labelers": ["ann"]}).is_success
        aid = _login(base, "ann").get("/api/queue").json()["assignments"][0]["assignment_id"]
        page = browser.new_page()
        page.goto(f"{base}/login")
        page.fill("input[name=username]", "ann")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/label/{aid}")
        page.wait_for_selector("body[data-ready='1']")
        assert page.is_visible("#binary-section") and not page.is_visible("#ranking-section")
        shown = page.text_content("#binary-response")
        assert shown in [r for rs in RESPONSES.values() for r in rs]

        def pressed():
            return [page.get_attribute(f"#verdict-{v}", "aria-pressed") for v in ("good", "bad")]

        assert pressed() == ["false", "false"]
        page.keyboard.press("g")
        assert pressed() == ["true", "false"]
        page.keyboard.press("b")
        assert pressed() == ["false", "true"]
        page.keyboard.press("h")  # the harmful flag, as on a ranking task
        page.keyboard.press("Control+s")
        page.wait_for_function("() => document.getElementById('status').textContent === 'draft'")
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert pressed() == ["false", "true"] and page.is_checked('.flag[value="harmful"]')
        page.click("#verdict-good")
        page.keyboard.press("Control+Enter")
        page.wait_for_function("() => document.getElementById('status').textContent === 'submitted'")
        label = _login(base, "ann").get(f"/api/assignments/{aid}").json()["label"]
        assert (label["good"], label["flags"]) == (True, ["harmful"])
        page.close()
