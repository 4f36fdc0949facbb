"""Generations (checkpoint + sampling settings of sampled responses) and project locking.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("checkpoint", sa.Text, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_generations_project_id", "generations", ["project_id"])
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("generation_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_responses_generation_id", "generations", ["generation_id"], ["id"])
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("locked_at")
    with op.batch_alter_table("responses") as batch:
        batch.drop_constraint("fk_responses_generation_id", type_="foreignkey")
        batch.drop_column("generation_id")
    op.drop_index("ix_generations_project_id", "generations")
    op.drop_table("generations")
