"""`prefer import` (issue 25): an Argilla or a Label Studio ranking export becomes a new project: prompts,
responses, and each annotator's ranking as a label of an imported labeler (which cannot log in), or the prompts
as ranking tasks for this app's labelers. The fixtures below are written here, after each tool's documented JSON
export; the result is checked through a real `prefer serve` and its export, on SQLite and PostgreSQL. A malformed
file is one line naming the file and the record, exit 2, and nothing is written."""

import json

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_testing import ADMIN, PASSWORD, db_url, make_app, postgres_url, server  # noqa: F401 (fixtures)

from prefer.cli import main

# Argilla 2 (`dataset.records.to_json`): fields, and responses per question (the SDK's ranking form: option values,
# best first; each option value names the field holding the response). Two annotators; one draft, left out.
ARGILLA = [
    {
        "id": "r1",
        "fields": {"prompt": "Say hi.", "response-1": "hi", "response-2": "hello there", "response-3": "go away"},
        "metadata": {},
        "suggestions": {},
        "responses": {
            "preference": [
                {"value": ["response-2", "response-1", "response-3"], "user_id": "u-ann"},
                {"value": ["response-1", "response-2", "response-3"], "user_id": "u-bob", "status": "draft"},
            ],
            "comment": [{"value": "fine", "user_id": "u-ann"}],
        },
        "vectors": {},
        "_server_id": None,
    },
    {
        "id": "r2",
        # the server's form (Argilla 1.x): {"value", "rank"}, equal ranks tie
        "fields": {"prompt": "Name a colour.", "response-1": "red", "response-2": "blue", "response-3": "seven"},
        "responses": {
            "preference": [
                {
                    "value": [
                        {"value": "response-3", "rank": 2},
                        {"value": "response-1", "rank": 1},
                        {"value": "response-2", "rank": 1},
                    ],
                    "user_id": "u-bob",
                }
            ]
        },
    },
    {"id": "r3", "fields": {"prompt": "Count to two.", "response-1": "1 2", "response-2": "2 1"}, "responses": {}},
]

# Label Studio (Export -> JSON) with a List + Ranker config: data lists items with ids; a ranker result lists the
# ids best first. The second task uses Buckets (a bucket's items tie); a cancelled annotation is left out.
LABEL_STUDIO = [
    {
        "id": 1,
        "data": {
            "prompt": "Say hi.",
            "items": [{"id": "a", "title": "A", "body": "hi"}, {"id": "b", "title": "B", "body": "hello there"}],
        },
        "annotations": [
            {
                "id": 11,
                "completed_by": 7,
                "was_cancelled": False,
                "result": [
                    {
                        "value": {"ranker": {"rank": ["b", "a"]}},
                        "id": "x1",
                        "from_name": "rank",
                        "to_name": "results",
                        "type": "ranker",
                        "origin": "manual",
                    }
                ],
            },
            {
                "id": 12,
                "completed_by": 8,
                "was_cancelled": True,
                "result": [{"type": "ranker", "value": {"ranker": {"rank": ["a", "b"]}}}],
            },
        ],
    },
    {
        "id": 2,
        "data": {
            "prompt": "Name a colour.",
            "items": [{"id": "r", "text": "red"}, {"id": "bl", "text": "blue"}, {"id": "s", "text": "seven"}],
        },
        "annotations": [
            {
                "id": 13,
                "completed_by": 7,
                "was_cancelled": False,
                "result": [{"type": "ranker", "value": {"ranker": {"good": ["r", "bl"], "bad": ["s"]}}}],
            }
        ],
    },
]


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _rankings(base: str, pid: int) -> list[dict]:
    text = httpx.get(f"{base}/api/admin/projects/{pid}/export/rankings.jsonl", headers=ADMIN).text
    return [json.loads(line) for line in text.splitlines()]


def test_argilla_and_label_studio_exports_become_projects_on_both_databases(db_url, tmp_path, capsys):
    argilla = _write(tmp_path / "argilla.json", ARGILLA)
    assert main(["import", str(argilla), "--format", "argilla", "--db", db_url, "--project", "from-argilla"]) == 0
    result = json.loads(capsys.readouterr().out)
    # One submitted annotator (bob's draft on r1 is no label; bob's r2 answer is): two labelers, two labels.
    assert result["prompts"] == 3 and result["labels_imported"] == 2
    assert result["labelers"] == ["imported-u-ann", "imported-u-bob"]
    studio = _write(tmp_path / "ls.json", LABEL_STUDIO)
    command = ["import", str(studio), "--format", "label-studio", "--db", db_url, "--project", "from-ls"]
    assert main([*command, "--labeler", "ls"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["prompts"], result["labels_imported"], result["labelers"]) == (2, 2, ["ls"])  # one annotator

    with server(db_url) as (base, _):
        projects = httpx.get(f"{base}/api/admin/projects", headers=ADMIN).json()["projects"]
        ids = {p["name"]: p["id"] for p in projects}
        by_prompt = {r["prompt"]: r for r in _rankings(base, ids["from-argilla"])}
        assert set(by_prompt) == {"Say hi.", "Name a colour."}  # "Count to two." has no answer: no task
        hi = by_prompt["Say hi."]
        # responses in field order; ann ranked response-2, response-1, response-3 -> indices [1, 0, 2]
        assert hi["responses"] == ["hi", "hello there", "go away"] and hi["ranking"] == [1, 0, 2]
        assert hi["provenance"]["labeler"] == "imported-u-ann"
        colour = by_prompt["Name a colour."]
        assert colour["ranking"] == [[0, 1], 2] and colour["provenance"]["labeler"] == "imported-u-bob"  # a tie

        by_prompt = {r["prompt"]: r for r in _rankings(base, ids["from-ls"])}
        assert by_prompt["Say hi."]["responses"] == ["hi", "hello there"] and by_prompt["Say hi."]["ranking"] == [1, 0]
        assert by_prompt["Name a colour."]["ranking"] == [[0, 1], 2]  # bucket "good" ties red and blue
        # The prompt without answers is still in the project, with its responses.
        browsed = httpx.get(f"{base}/api/admin/projects/{ids['from-argilla']}/prompts", headers=ADMIN).json()
        count = next(p for p in browsed["prompts"] if p["text"] == "Count to two.")
        assert [r["text"] for r in count["responses"]] == ["1 2", "2 1"] and count["tasks"] == []
        # An imported labeler cannot log in, whatever the password.
        for password in ("", "!imported: no password logs in", PASSWORD):
            refused = httpx.post(f"{base}/api/login", json={"username": "ls", "password": password or "x"})
            assert refused.status_code == 401


def test_as_tasks_makes_every_prompt_a_ranking_task_for_this_apps_labelers(db_url, tmp_path, capsys):
    with server(db_url) as (base, _):
        for name in ("ann", "bob"):
            made = httpx.post(
                f"{base}/api/admin/labelers", json={"username": name, "password": PASSWORD}, headers=ADMIN
            )
            assert made.status_code == 201
        argilla = _write(tmp_path / "argilla.json", ARGILLA)
        command = ["import", str(argilla), "--format", "argilla", "--db", db_url, "--project", "to-label"]
        assert main([*command, "--as-tasks", "--labelers", "ann,bob", "--overlap", "2"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result == {
            "file": str(argilla),
            "project": "to-label",
            "prompts": 3,
            "tasks_created": 3,
            "assignments_created": 6,
            "labels_imported": 0,
        }
        ann = httpx.Client(base_url=base)
        ann.post("/api/login", json={"username": "ann", "password": PASSWORD})
        queue = ann.get("/api/queue").json()["assignments"]
        assert sorted(a["prompt"] for a in queue) == ["Count to two.", "Name a colour.", "Say hi."]
        assert {a["kind"] for a in queue} == {"ranking"}


MALFORMED = [
    ("argilla", "not json", "argilla.json: not a JSON file"),
    ("argilla", {"records": []}, "argilla.json: expected a JSON list of records"),
    ("argilla", [ARGILLA[0], {"id": "x"}], "argilla.json: record 2: expected an object with 'fields'"),
    ("argilla", [{"fields": {"prompt": "p", "response-1": "a"}}], "argilla.json: record 1: 1 responses"),
    (
        "argilla",
        [{"fields": {"prompt": "", "response-1": "a", "response-2": "b"}}],
        "argilla.json: record 1: field 'prompt' (the prompt) must be a non-empty string",
    ),
    (
        "argilla",
        [
            ARGILLA[2],
            {
                "fields": {"prompt": "p", "response-1": "a", "response-2": "b"},
                "responses": {"preference": [{"value": ["response-1", "response-9"], "user_id": "u"}]},
            },
        ],
        "argilla.json: record 2: the ranking names ['response-9']",
    ),
    (
        "argilla",
        [
            {
                "fields": {"prompt": "p", "response-1": "a", "response-2": "b", "response-3": "c"},
                "responses": {"preference": [{"value": ["response-1", "response-2"], "user_id": "u"}]},
            }
        ],
        "argilla.json: record 1: ranking:",  # leaves response-3 out
    ),
    (
        "label-studio",
        [LABEL_STUDIO[0], {"id": 2, "data": {"prompt": "p", "items": [{"id": "a", "body": "x"}, {"id": "b"}]}}],
        "ls.json: record 2: item 'b' holds no text",
    ),
    (
        "label-studio",
        [
            {
                "data": {"prompt": "p", "items": [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}]},
                "annotations": [{"result": [{"type": "ranker", "value": {"ranker": "a,b"}}]}],
            }
        ],
        "ls.json: record 1: a ranker result must hold value.ranker",
    ),
    ("label-studio", [{"id": 1}], "ls.json: record 1: expected an object with 'data'"),
]


@pytest.mark.parametrize(("tool", "content", "message"), MALFORMED)
def test_malformed_exports_are_one_line_naming_file_and_record_and_write_nothing(
    tool, content, message, tmp_path, capsys
):
    path = tmp_path / ("argilla.json" if tool == "argilla" else "ls.json")
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    db = tmp_path / "labels.db"
    assert main(["import", str(path), "--format", tool, "--db", str(db), "--project", "broken"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and message in error, error
    assert str(path) in error
    assert not db.exists()  # refused before the database was opened


def test_an_existing_project_or_a_real_labelers_name_is_refused(tmp_path, capsys):
    db = str(tmp_path / "labels.db")
    argilla = _write(tmp_path / "argilla.json", ARGILLA[:1])
    assert main(["import", str(argilla), "--format", "argilla", "--db", db, "--project", "p"]) == 0
    capsys.readouterr()
    assert main(["import", str(argilla), "--format", "argilla", "--db", db, "--project", "p"]) == 2
    assert "--project: a project named 'p' exists" in capsys.readouterr().err
    app = make_app(db)  # a labeler of this app named like the imported one
    try:
        made = TestClient(app).post(
            "/api/admin/labelers", json={"username": "real", "password": PASSWORD}, headers=ADMIN
        )
        assert made.status_code == 201
    finally:
        app.state.engine.dispose()
    command = ["import", str(argilla), "--format", "argilla", "--db", db, "--project", "q", "--labeler", "real"]
    assert main(command) == 2
    assert "--labeler: 'real' is a labeler of this app" in capsys.readouterr().err
    assert main([*command[:-1], "imported"]) == 0  # the imported labeler of project p takes q's answers too
