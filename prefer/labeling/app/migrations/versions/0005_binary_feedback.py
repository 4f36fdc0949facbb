"""Binary feedback (issue 25): a task kind that judges one response good or bad. Tasks get `response_id` (the
response a binary task shows), labels get `good` (thumbs up / down). One ranking / demonstration task per prompt
stays unique through a partial unique index; binary tasks are unique per response.

Revision ID: 0005_binary_feedback
Revises: 0004_adjudications
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_binary_feedback"
down_revision = "0004_adjudications"
branch_labels = None
depends_on = None

WHOLE_PROMPT = sa.text("response_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("response_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_tasks_response_id", "responses", ["response_id"], ["id"])
        batch.drop_constraint("uq_tasks_prompt_kind", type_="unique")
        batch.create_unique_constraint("uq_tasks_response_kind", ["response_id", "kind"])
    op.create_index(
        "uq_tasks_whole_prompt_kind",
        "tasks",
        ["prompt_id", "kind"],
        unique=True,
        sqlite_where=WHOLE_PROMPT,
        postgresql_where=WHOLE_PROMPT,
    )
    with op.batch_alter_table("labels") as batch:
        batch.add_column(sa.Column("good", sa.Boolean, nullable=True))


def downgrade() -> None:
    # Binary tasks and everything that refers to them have no place in 0004.
    binary_tasks = "SELECT id FROM tasks WHERE kind = 'binary'"
    binary_assignments = f"SELECT id FROM assignments WHERE task_id IN ({binary_tasks})"
    op.execute(sa.text(f"DELETE FROM adjudications WHERE task_id IN ({binary_tasks})"))
    op.execute(sa.text(f"DELETE FROM labels WHERE assignment_id IN ({binary_assignments})"))
    op.execute(sa.text(f"DELETE FROM assignments WHERE task_id IN ({binary_tasks})"))
    op.execute(sa.text("DELETE FROM tasks WHERE kind = 'binary'"))
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("good")
    op.drop_index("uq_tasks_whole_prompt_kind", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint("uq_tasks_response_kind", type_="unique")
        batch.drop_constraint("fk_tasks_response_id", type_="foreignkey")
        batch.drop_column("response_id")
        batch.create_unique_constraint("uq_tasks_prompt_kind", ["prompt_id", "kind"])
