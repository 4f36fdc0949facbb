"""The lead's pages (issue 25) through the HTTP API, on SQLite and PostgreSQL: each labeler's progress, assigning
chosen labelers to a batch of tasks, browsing prompts with every labeler's answers (paginated), the review of
disagreements with adjudication (which the export then uses), per-kind instructions with their line breaks; every
new route is the admin's only and checks the CSRF token of a cookie session."""

import pytest
from fastapi.testclient import TestClient
from serve_testing import (  # noqa: F401 (fixtures)
    ADMIN,
    TOKEN,
    Labeler,
    app,
    db_url,
    make_app,
    postgres_url,
    setup_project,
)

RESPONSES = {
    "Say hi.": ["hi", "hello there", "hey"],
    "Name a colour.": ["red", "blue", "green"],
    "Count to two.": ["1 2", "one, two", "2 1"],
}


@pytest.fixture
def client_app(db_url):
    application = make_app(db_url)
    yield TestClient(application), application
    application.state.engine.dispose()


def queue(labeler):
    return {a["prompt"]: a["assignment_id"] for a in labeler.request("GET", "/api/queue").json()["assignments"]}


def submit(labeler, aid, body):
    response = labeler.request("POST", f"/api/assignments/{aid}/submit", json=body)
    assert response.status_code == 201, response.text
    return response.json()["label_id"]


def export(client, pid, kind="rankings"):
    import json

    text = client.get(f"/api/admin/projects/{pid}/export/{kind}.jsonl", headers=ADMIN).text
    return [json.loads(line) for line in text.splitlines()]


def test_labelers_progress_and_assigning_a_batch(client_app):
    client, application = client_app
    pid = setup_project(client, prompts=list(RESPONSES), responses=RESPONSES, labelers=("ann", "bob"))
    for name in ("cid", "dee"):
        client.post("/api/admin/labelers", json={"username": name, "password": "correct horse battery"}, headers=ADMIN)
    ann = Labeler(application, "ann")
    # 3 tasks, overlap 1, least loaded first (ties by id): ann gets tasks 1 and 3, bob task 2.
    submit(ann, queue(ann)["Say hi."], {"ranking": [0, 1, 2]})
    ann.request("PUT", f"/api/assignments/{queue(ann)['Count to two.']}/draft", json={"ranking": [1]})
    rows = {
        r["username"]: r for r in client.get(f"/api/admin/projects/{pid}/labelers", headers=ADMIN).json()["labelers"]
    }
    assert (rows["ann"]["done"], rows["ann"]["assigned"], rows["ann"]["draft"]) == (1, 2, 1)
    assert (rows["bob"]["done"], rows["bob"]["assigned"], rows["bob"]["pending"]) == (0, 1, 1)
    assert rows["cid"]["assigned"] == 0 and rows["cid"]["last_activity"] is None and rows["cid"]["active"]
    assert rows["ann"]["last_activity"].endswith("+00:00")  # with its time zone, on SQLite too
    client.patch(f"/api/admin/labelers/{rows['dee']['id']}", json={"active": False}, headers=ADMIN)
    rows = {
        r["username"]: r for r in client.get(f"/api/admin/projects/{pid}/labelers", headers=ADMIN).json()["labelers"]
    }
    assert rows["dee"]["active"] is False

    tasks = [
        t["task_id"]
        for p in client.get(f"/api/admin/projects/{pid}/prompts", headers=ADMIN).json()["prompts"]
        for t in p["tasks"]
    ]
    assert len(tasks) == 3
    url = f"/api/admin/projects/{pid}/assignments"
    # ann holds 2 of the 3, cid none: 1 + 3 new assignments, 2 kept.
    made = client.post(url, json={"labelers": ["ann", "cid"], "task_ids": tasks}, headers=ADMIN)
    assert made.status_code == 201 and made.json() == {"assignments_created": 4, "already_assigned": 2, "tasks": 3}
    assert sorted(queue(Labeler(application, "cid"))) == sorted(RESPONSES)
    again = client.post(url, json={"labelers": ["cid"], "task_ids": tasks}, headers=ADMIN).json()
    assert again["assignments_created"] == 0  # nothing twice
    refusals = [
        ({"labelers": ["dee"], "task_ids": tasks}, "deactivated labeler(s) ['dee']"),
        ({"labelers": ["zed"], "task_ids": tasks}, "no labeler(s) ['zed']"),
        ({"labelers": ["ann"], "task_ids": [tasks[0], 999]}, "no task(s) [999]"),
    ]
    for body, message in refusals:
        refused = client.post(url, json=body, headers=ADMIN)
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text
    other = setup_project(client, name="other", prompts=["Elsewhere."], labelers=("ann",), kinds=("demonstration",))
    assert client.post(url, json={"labelers": ["ann"], "task_ids": [4]}, headers=ADMIN).status_code == 422
    assert (
        client.post(
            f"/api/admin/projects/{other}/assignments", json={"labelers": ["bob"], "task_ids": [4]}, headers=ADMIN
        ).json()["assignments_created"]
        == 1
    )


def test_browse_pages_prompts_with_each_answer(client_app):
    client, application = client_app
    prompts = [f"Prompt {i}." for i in range(5)]
    pid = setup_project(client, prompts=prompts, labelers=("ann", "bob"), overlap=2, kinds=("demonstration",))
    ann, bob = Labeler(application, "ann"), Labeler(application, "bob")
    submit(ann, queue(ann)["Prompt 4."], {"demonstration": "Line one.\nLine two.", "quality": 5, "flags": ["harmful"]})
    bob.request("POST", f"/api/assignments/{queue(bob)['Prompt 4.']}/skip")
    url = f"/api/admin/projects/{pid}/prompts"
    first = client.get(url, params={"per_page": 2}, headers=ADMIN).json()
    assert (first["total"], first["pages"], [p["text"] for p in first["prompts"]]) == (5, 3, prompts[:2])
    last = client.get(url, params={"per_page": 2, "page": 3}, headers=ADMIN).json()
    [prompt] = last["prompts"]
    [task] = prompt["tasks"]
    answers = {a["labeler"]: a for a in task["answers"]}
    assert answers["ann"]["status"] == "submitted" and answers["bob"]["status"] == "skipped"
    label = answers["ann"]["label"]
    assert (label["demonstration"], label["quality"], label["flags"]) == ("Line one.\nLine two.", 5, ["harmful"])
    assert answers["bob"]["label"] is None and task["adjudication"] is None
    assert client.get(url, params={"page": 0}, headers=ADMIN).status_code == 422
    assert client.get(url, params={"per_page": 101}, headers=ADMIN).status_code == 422


def test_review_lists_disagreements_and_the_export_uses_the_adjudication(client_app):
    client, application = client_app
    pid = setup_project(client, prompts=list(RESPONSES), responses=RESPONSES, overlap=2, labelers=("ann", "bob"))
    ann, bob = Labeler(application, "ann"), Labeler(application, "bob")
    a, b = queue(ann), queue(bob)
    submit(ann, a["Say hi."], {"ranking": [0, 1, 2]})
    submit(bob, b["Say hi."], {"ranking": [0, 1, 2]})  # agree: not listed
    submit(ann, a["Name a colour."], {"ranking": [0, 1, 2]})
    bob_colour = submit(bob, b["Name a colour."], {"ranking": [2, 1, 0]})  # all 3 pairs opposite: agreement 0/3
    submit(ann, a["Count to two."], {"ranking": [0, 1, 2]})
    # bob swaps 0 and 1 only: pairs (0,1) opposite, (0,2) and (1,2) the same: agreement 2/3.
    submit(bob, b["Count to two."], {"ranking": [1, 0, 2]})
    url = f"/api/admin/projects/{pid}/disagreements"
    listed = client.get(url, headers=ADMIN).json()
    assert [t["prompt"] for t in listed["tasks"]] == ["Name a colour.", "Count to two."]  # most disputed first
    assert [t["pairwise_agreement"] for t in listed["tasks"]] == [0.0, pytest.approx(2 / 3)]
    colour, count = listed["tasks"]
    assert {x["labeler"]: x["label"]["ranking"] for x in colour["answers"]} == {"ann": [0, 1, 2], "bob": [2, 1, 0]}
    assert [r["text"] for r in colour["responses"]] == RESPONSES["Name a colour."]
    assert len(export(client, pid)) == 6  # 3 tasks x 2 labelers

    put = lambda task, body: client.put(f"/api/admin/tasks/{task}/adjudication", json=body, headers=ADMIN)  # noqa: E731
    assert put(colour["task_id"], {"label_id": bob_colour, "note": "bob read it right"}).status_code == 200
    assert put(count["task_id"], {"ranking": [[0, 1], 2]}).status_code == 200
    for task, body, message in [
        (count["task_id"], {"ranking": [[0, 1, 2]]}, "every response ties"),
        (count["task_id"], {"ranking": [0, 1]}, "leaves out response(s) [2]"),
        (count["task_id"], {"label_id": bob_colour}, f"label_id {bob_colour}: not an answer to task"),
        (count["task_id"], {"label_id": bob_colour, "ranking": [0, 1, 2]}, "exactly one of"),
        (count["task_id"], {}, "exactly one of"),
        (count["task_id"], {"demonstration": "text"}, "is a ranking task"),
    ]:
        refused = put(task, body)
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text
    assert put(999, {"ranking": [0, 1, 2]}).status_code == 404

    records = {r["prompt"]: r for r in export(client, pid) if r["prompt"] != "Say hi."}
    assert len(export(client, pid)) == 4  # 2 agreeing labels + one final answer per adjudicated task
    assert records["Name a colour."]["ranking"] == [2, 1, 0]
    provenance = records["Name a colour."]["provenance"]
    assert provenance["labeler"] == "bob" and provenance["adjudication"]["accepted_label"] == bob_colour
    assert len(provenance["adjudication"]["replaced_labels"]) == 2
    assert (
        records["Count to two."]["ranking"] == [[0, 1], 2]
        and records["Count to two."]["provenance"]["labeler"] == "admin"
    )
    # [[0, 1], 2]: 0 and 1 tie (no pair), each beats 2: two pairs.
    count_pairs = [p for p in export(client, pid, "pairs") if p["prompt"] == "Count to two."]
    assert sorted((p["chosen"], p["rejected"]) for p in count_pairs) == [("1 2", "2 1"), ("one, two", "2 1")]
    assert "adjudication" not in next(r for r in export(client, pid) if r["prompt"] == "Say hi.")["provenance"]

    assert client.get(url, params={"status": "open"}, headers=ADMIN).json()["total"] == 0
    decided = client.get(url, params={"status": "decided"}, headers=ADMIN).json()["tasks"]
    assert (
        decided[0]["adjudication"]["note"] == "bob read it right"
        and decided[0]["adjudication"]["label_id"] == bob_colour
    )
    withdrawn = client.delete(f"/api/admin/tasks/{colour['task_id']}/adjudication", headers=ADMIN)
    assert withdrawn.json() == {"task_id": colour["task_id"], "withdrawn": True}
    assert len(export(client, pid)) == 5  # both labelers' answers to the colour task again
    # The agreement figures are the labelers' own, whatever the lead decided.
    assert client.get(f"/api/admin/projects/{pid}/agreement", headers=ADMIN).json()["overall"]["pairs_compared"] == 9


def test_demonstration_review_and_per_kind_instructions(client_app):
    client, application = client_app
    made = client.post(
        "/api/admin/projects",
        json={
            "name": "demo",
            "instructions": "Be kind.\nBe brief.",
            "kind_instructions": {"demonstration": "Write the reply\nyou would want.", "ranking": "Rank best first."},
        },
        headers=ADMIN,
    )
    pid = made.json()["id"]
    for name in ("ann", "bob"):
        client.post("/api/admin/labelers", json={"username": name, "password": "correct horse battery"}, headers=ADMIN)
    client.post(f"/api/admin/projects/{pid}/prompts", content=b'{"prompt": "Say hi."}\n', headers=ADMIN)
    client.post(f"/api/admin/projects/{pid}/tasks", json={"kind": "demonstration", "overlap": 2}, headers=ADMIN)
    ann, bob = Labeler(application, "ann"), Labeler(application, "bob")
    view = ann.request("GET", f"/api/assignments/{queue(ann)['Say hi.']}").json()
    assert view["instructions"] == "Be kind.\nBe brief.\n\nWrite the reply\nyou would want."  # line breaks kept
    assert "Rank" not in view["instructions"]
    first = submit(ann, queue(ann)["Say hi."], {"demonstration": "Hi!"})
    submit(bob, queue(bob)["Say hi."], {"demonstration": "Hello there."})
    [task] = client.get(f"/api/admin/projects/{pid}/disagreements", headers=ADMIN).json()["tasks"]
    assert task["kind"] == "demonstration" and task["pairwise_agreement"] is None
    put = lambda body: client.put(f"/api/admin/tasks/{task['task_id']}/adjudication", json=body, headers=ADMIN)  # noqa: E731
    assert put({"ranking": [0, 1]}).status_code == 422
    assert put({"demonstration": "Hello! How can I help?"}).status_code == 200
    [record] = export(client, pid, "demonstrations")
    assert record["response"] == "Hello! How can I help?" and record["provenance"]["labeler"] == "admin"
    assert put({"label_id": first}).status_code == 200  # replaced: one adjudication per task
    [record] = export(client, pid, "demonstrations")
    assert (record["response"], record["provenance"]["labeler"]) == ("Hi!", "ann")

    patched = client.patch(
        f"/api/admin/projects/{pid}", json={"kind_instructions": {"demonstration": "Only this."}}, headers=ADMIN
    )
    assert patched.json()["kind_instructions"] == {"demonstration": "Only this."}
    assert patched.json()["instructions"] == "Be kind.\nBe brief."  # left out: unchanged
    view = ann.request("GET", f"/api/assignments/{queue(ann)['Say hi.']}").json()
    assert view["instructions"] == "Be kind.\nBe brief.\n\nOnly this."
    refused = client.patch(f"/api/admin/projects/{pid}", json={"kind_instructions": {"essay": "x"}}, headers=ADMIN)
    assert refused.status_code == 422 and "unknown task kind(s) ['essay']" in refused.json()["detail"]


def judged(labeler):
    """(prompt, response text) -> assignment id of the labeler's binary tasks."""
    found = {}
    for item in labeler.request("GET", "/api/queue").json()["assignments"]:
        if item["kind"] == "binary":
            [response] = labeler.request("GET", f"/api/assignments/{item['assignment_id']}").json()["responses"]
            found[item["prompt"], response["text"]] = item["assignment_id"]
    return found


def test_binary_disagreements_are_reviewed_and_the_export_uses_the_decision(client_app):
    client, application = client_app
    responses = {"Say hi.": ["hi", "hello there"], "Name a colour.": ["red", "blue"]}
    pid = setup_project(client, prompts=list(responses), responses=responses, overlap=2, kinds=("binary", "ranking"))
    ann, bob = Labeler(application, "ann"), Labeler(application, "bob")
    a, b = judged(ann), judged(bob)
    submit(ann, a["Say hi.", "hi"], {"good": True})
    submit(bob, b["Say hi.", "hi"], {"good": True})  # agree: not listed
    submit(ann, a["Say hi.", "hello there"], {"good": True})
    bob_hello = submit(bob, b["Say hi.", "hello there"], {"good": False, "flags": ["made_up_facts"]})
    submit(ann, a["Name a colour.", "red"], {"good": False})
    submit(bob, b["Name a colour.", "red"], {"good": True})
    submit(ann, a["Name a colour.", "blue"], {"good": True})  # one answer: nothing to compare

    url = f"/api/admin/projects/{pid}/disagreements"
    listed = client.get(url, headers=ADMIN).json()
    assert [(t["kind"], t["prompt"], t["response_index"]) for t in listed["tasks"]] == [
        ("binary", "Say hi.", 1),
        ("binary", "Name a colour.", 0),
    ]
    assert [t["pairwise_agreement"] for t in listed["tasks"]] == [0.0, 0.0]  # the one labeler pair differs
    hello, red = listed["tasks"]
    assert {x["labeler"]: x["label"]["good"] for x in hello["answers"]} == {"ann": True, "bob": False}
    # The agreement figures: 3 responses judged by both, the same verdict on 1.
    binary = client.get(f"/api/admin/projects/{pid}/agreement", headers=ADMIN).json()["binary"]
    assert binary["overall"] == {"comparisons": 3, "agreed": 1, "pairwise_agreement": pytest.approx(1 / 3)}
    assert binary["tasks_with_overlap"] == 3 and binary["per_labeler"]["bob"]["agreed"] == 1

    put = lambda task, body: client.put(f"/api/admin/tasks/{task}/adjudication", json=body, headers=ADMIN)  # noqa: E731
    assert put(hello["task_id"], {"label_id": bob_hello, "note": "it made that up"}).status_code == 200
    decided = put(red["task_id"], {"good": False})
    assert decided.status_code == 200 and decided.json()["good"] is False
    ranking_task = next(
        t["task_id"]
        for p in client.get(f"/api/admin/projects/{pid}/prompts", headers=ADMIN).json()["prompts"]
        for t in p["tasks"]
        if t["kind"] == "ranking"
    )
    for task, body, message in [
        (red["task_id"], {"good": "no"}, "good: "),
        (red["task_id"], {"good": True, "label_id": bob_hello}, "exactly one of"),
        (red["task_id"], {"ranking": [0, 1]}, "is a binary task"),
        (ranking_task, {"good": True}, "good: task"),
    ]:
        refused = put(task, body)
        assert refused.status_code == 422 and message in refused.json()["detail"], refused.text

    def exported():
        return sorted(
            (r["prompt"], r["completion"], r["label"], r["provenance"]["labeler"])
            for r in export(client, pid, "binary")
        )

    # One record per decided task, with the decision: bob's accepted label, the lead's own verdict.
    assert exported() == [
        ("Name a colour.", "blue", True, "ann"),
        ("Name a colour.", "red", False, "admin"),
        ("Say hi.", "hello there", False, "bob"),
        ("Say hi.", "hi", True, "ann"),
        ("Say hi.", "hi", True, "bob"),
    ]
    provenance = {r["completion"]: r["provenance"] for r in export(client, pid, "binary")}
    assert provenance["hello there"]["adjudication"]["accepted_label"] == bob_hello
    assert provenance["hello there"]["flags"] == ["made_up_facts"]
    assert provenance["red"]["adjudication"]["accepted_label"] is None
    assert client.get(url, params={"status": "open"}, headers=ADMIN).json()["total"] == 0
    assert (
        client.get(url, params={"status": "decided"}, headers=ADMIN).json()["tasks"][1]["adjudication"]["good"] is False
    )
    assert client.delete(f"/api/admin/tasks/{red['task_id']}/adjudication", headers=ADMIN).json()["withdrawn"]
    assert [r[2:] for r in exported() if r[1] == "red"] == [(False, "ann"), (True, "bob")]  # both labelers again


ROUTES = [
    ("GET", "/api/admin/projects/1", None),
    ("PATCH", "/api/admin/projects/1", {"instructions": "x"}),
    ("GET", "/api/admin/projects/1/labelers", None),
    ("POST", "/api/admin/projects/1/assignments", {"labelers": ["ann"], "task_ids": [1]}),
    ("GET", "/api/admin/projects/1/prompts", None),
    ("GET", "/api/admin/projects/1/disagreements", None),
    ("PUT", "/api/admin/tasks/1/adjudication", {"ranking": [0, 1, 2]}),
    ("DELETE", "/api/admin/tasks/1/adjudication", None),
]


def test_new_admin_routes_are_the_admins_only_and_check_csrf(client_app):
    client, app = client_app  # an admin cookie session on PostgreSQL too (its admin_key once overflowed a column)
    setup_project(client, prompts=list(RESPONSES), responses=RESPONSES, labelers=("ann",))
    ann = Labeler(app, "ann")
    admin = TestClient(app)
    csrf = admin.post("/api/admin/login", json={"token": TOKEN}).json()["csrf_token"]
    for method, url, body in ROUTES:
        assert TestClient(app).request(method, url, json=body).status_code == 401, url
        assert ann.request(method, url, json=body).status_code == 403, url
        with_csrf = admin.request(method, url, json=body, headers={"X-CSRF-Token": csrf})
        assert with_csrf.status_code < 300, (url, with_csrf.text)
        if method != "GET":
            refused = admin.request(method, url, json=body)
            assert refused.status_code == 403 and "CSRF" in refused.json()["detail"], url


def test_project_page_escapes_what_it_shows(app):
    client = TestClient(app)
    script = "<script>alert(1)</script>"
    client.post(
        "/api/admin/projects",
        json={"name": f"p {script}", "instructions": script, "kind_instructions": {"ranking": script}},
        headers=ADMIN,
    )
    client.post("/api/admin/login", json={"token": TOKEN})
    page = client.get("/admin/projects/1").text
    assert script not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for tab in ("tab-labelers", "tab-browse", "tab-review"):
        assert f'id="{tab}"' in page
