"""Binary answers in review, and chat prompts: an adjudication may set a binary task's final verdict
(`adjudications.good`), and a prompt records the chat-template rendering its responses were sampled from
(`prompts.rendered`, NULL for text prompts and uploaded responses), which the export writes as the prompt.

Revision ID: 0006_binary_review_chat_prompts
Revises: 0005_binary_feedback
Create Date: 2026-12-11
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_binary_review_chat_prompts"
down_revision = "0005_binary_feedback"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adjudications") as batch:
        batch.add_column(sa.Column("good", sa.Boolean, nullable=True))
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("rendered", sa.Text, nullable=True))


def _drop_column(table: str, column: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # In place (SQLite >= 3.35): batch mode would copy the table and drop the original, which fails under
        # PRAGMA foreign_keys=ON once other rows refer to it (responses and tasks refer to prompts).
        op.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    else:
        op.drop_column(table, column)


def downgrade() -> None:
    # A written binary verdict has no place in 0005 (an adjudication there holds a label, a ranking or a text).
    op.execute(sa.text("DELETE FROM adjudications WHERE good IS NOT NULL"))
    _drop_column("prompts", "rendered")
    _drop_column("adjudications", "good")
