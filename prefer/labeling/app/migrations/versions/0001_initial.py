"""Initial schema: projects, prompts, responses, users, sessions, tasks, assignments, labels.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _when(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("instructions", sa.Text, nullable=False),
        _when("created_at"),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.UniqueConstraint("project_id", "text", name="uq_prompts_project_text"),
    )
    op.create_index("ix_prompts_project_id", "prompts", ["project_id"])
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.UniqueConstraint("prompt_id", "position", name="uq_responses_prompt_position"),
    )
    op.create_index("ix_responses_prompt_id", "responses", ["prompt_id"])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(200), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        _when("created_at"),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        _when("created_at"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.UniqueConstraint("prompt_id", "kind", name="uq_tasks_prompt_kind"),
    )
    op.create_index("ix_tasks_project_id", "tasks", ["project_id"])
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("draft", sa.JSON, nullable=True),
        _when("updated_at"),
        sa.UniqueConstraint("task_id", "user_id", name="uq_assignments_task_user"),
    )
    op.create_index("ix_assignments_task_id", "assignments", ["task_id"])
    op.create_index("ix_assignments_user_id", "assignments", ["user_id"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("ranking", sa.JSON, nullable=True),
        sa.Column("demonstration", sa.Text, nullable=True),
        sa.Column("quality", sa.Integer, nullable=True),
        sa.Column("flags", sa.JSON, nullable=False),
        _when("created_at"),
        sa.UniqueConstraint("assignment_id", "version", name="uq_labels_assignment_version"),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_labels_user_key"),
    )
    op.create_index("ix_labels_assignment_id", "labels", ["assignment_id"])


def downgrade() -> None:
    for table in ("labels", "assignments", "tasks", "sessions", "users", "responses", "prompts", "projects"):
        op.drop_table(table)
