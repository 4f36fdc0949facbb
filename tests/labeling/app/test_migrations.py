"""Alembic owns the schema: head equals the ORM exactly, and a database made by the first migration (with data in
it) upgrades to head keeping its data, then works with the app."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from serve_testing import ADMIN, Labeler, db_url, make_app, postgres_url  # noqa: F401 (fixtures)
from sqlalchemy import inspect, text

from prefer.labeling.app.db import current_revision, head_revision, make_engine, upgrade
from prefer.labeling.app.models import Base
from prefer.labeling.app.security import hash_password


def test_head_is_exactly_the_orm_schema(tmp_path):
    engine = make_engine(str(tmp_path / "head.db"))
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine) == "0006_binary_review_chat_prompts"
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
        assert current_revision(engine) == "0006_binary_review_chat_prompts"
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


def test_0003_ends_unbound_admin_sessions_and_marks_old_generations_done(db_url):
    from datetime import UTC, datetime

    from sqlalchemy import select

    from prefer.labeling.app.models import Generation, Session
    from prefer.labeling.app.security import new_token, token_digest

    engine = make_engine(db_url)
    upgrade(engine, "0002")
    labeler_token, created = new_token(), datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (id, username, password_hash, active, created_at) VALUES (1, 'ann', :h, :t, :c)"),
            {"h": hash_password("correct horse battery"), "t": True, "c": created},
        )
        connection.execute(
            text(
                "INSERT INTO sessions (token_hash, user_id, is_admin, csrf_token, created_at) "
                "VALUES (:a, NULL, :t, 'x', :c), (:b, 1, :f, 'y', :c)"
            ),
            {"a": token_digest(new_token()), "b": token_digest(labeler_token), "t": True, "f": False, "c": created},
        )
        connection.execute(
            text("INSERT INTO projects (id, name, instructions, created_at) VALUES (1, 'old', '', :c)"), {"c": created}
        )
        connection.execute(
            text(
                "INSERT INTO generations (project_id, checkpoint, settings, created_at) VALUES (1, '/ckpt', '{}', :c)"
            ),
            {"c": created},
        )
    engine.dispose()
    app = make_app(db_url)
    try:
        with app.state.sessionmaker() as db:
            assert [(s.user_id, s.is_admin) for s in db.scalars(select(Session))] == [(1, False)]
            generation = db.scalar(select(Generation))
            assert (generation.status, generation.prompts_done, generation.cancel_requested) == ("done", 0, False)
        ann = TestClient(app, cookies={"prefer_session": labeler_token})
        assert ann.get("/api/queue").status_code == 200  # a labeler's session survives the upgrade
    finally:
        app.state.engine.dispose()
