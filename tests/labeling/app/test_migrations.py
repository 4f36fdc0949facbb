"""Alembic owns the schema: head equals the ORM exactly, and a database made by the first migration (with data in
it) upgrades to head keeping its data, then works with the app."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from serve_testing import ADMIN, Labeler, make_app
from sqlalchemy import inspect, text

from prefer.labeling.app.db import current_revision, head_revision, make_engine, upgrade
from prefer.labeling.app.models import Base
from prefer.labeling.app.security import hash_password


def test_head_is_exactly_the_orm_schema(tmp_path):
    engine = make_engine(str(tmp_path / "head.db"))
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine) == "0002"
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_a_first_migration_database_upgrades_with_its_data(tmp_path):
    path = tmp_path / "old.db"
    engine = make_engine(str(path))
    upgrade(engine, "0001")
    assert "generations" not in inspect(engine).get_table_names()
    assert "locked_at" not in {c["name"] for c in inspect(engine).get_columns("projects")}
    with engine.begin() as connection:  # what a 0001-era server wrote: a project, a prompt, 2 responses, a labeler
        connection.execute(
            text(
                "INSERT INTO projects (id, name, instructions, created_at) VALUES (1, 'old', '', '2026-01-01 00:00:00')"
            )
        )
        connection.execute(text("INSERT INTO prompts (id, project_id, text) VALUES (1, 1, 'Say hi.')"))
        connection.execute(text("INSERT INTO responses (prompt_id, position, text) VALUES (1, 0, 'hi'), (1, 1, 'yo')"))
        connection.execute(
            text(
                "INSERT INTO users (username, password_hash, active, created_at) "
                "VALUES ('ann', :h, 1, '2026-01-01 00:00:00')"
            ),
            {"h": hash_password("correct horse battery")},
        )
    engine.dispose()

    app = make_app(str(path))  # upgrades to head, as `prefer serve` does
    try:
        engine = app.state.engine
        assert current_revision(engine) == "0002"
        assert "generations" in inspect(engine).get_table_names()
        client = TestClient(app)
        assert client.get("/api/admin/projects", headers=ADMIN).json()["projects"] == [
            {"id": 1, "name": "old", "locked": False}
        ]
        assert client.post("/api/admin/projects/1/tasks", json={"kind": "ranking"}, headers=ADMIN).status_code == 201
        ann = Labeler(app, "ann")  # the old password hash still logs in
        aid = ann.request("GET", "/api/queue").json()["assignments"][0]["assignment_id"]
        assert ann.request("POST", f"/api/assignments/{aid}/submit", json={"ranking": [1, 0]}).status_code == 201
        assert client.post("/api/admin/projects/1/lock", json={"locked": True}, headers=ADMIN).status_code == 200
    finally:
        app.state.engine.dispose()
