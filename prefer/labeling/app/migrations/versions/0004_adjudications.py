"""Review: the lead's adjudicated answer per task (accepting one labeler's label, or written by the lead), and
per-kind instructions on projects (issue 25, admin pages).

Revision ID: 0004_adjudications
Revises: 0003
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_adjudications"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adjudications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("label_id", sa.Integer, sa.ForeignKey("labels.id"), nullable=True),
        sa.Column("ranking", sa.JSON, nullable=True),
        sa.Column("demonstration", sa.Text, nullable=True),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("task_id", name="uq_adjudications_task"),
    )
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("kind_instructions", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("kind_instructions")
    op.drop_table("adjudications")
