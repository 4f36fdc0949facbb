"""Session expiry and admin-token binding; generations as background jobs (status, progress, cancellation).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("admin_key", sa.String(64), nullable=True))
    with op.batch_alter_table("generations") as batch:
        # Generations made before 0003 ran inside their request and finished with it: "done".
        batch.add_column(sa.Column("status", sa.String(20), nullable=False, server_default="done"))
        batch.add_column(sa.Column("prompts_total", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("prompts_done", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("result", sa.JSON, nullable=True))
        batch.add_column(sa.Column("error", sa.Text, nullable=True))
        batch.add_column(sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
    # The ORM supplies these values itself; the server defaults only filled the existing rows.
    with op.batch_alter_table("generations") as batch:
        for column in ("status", "prompts_total", "prompts_done", "cancel_requested"):
            batch.alter_column(column, server_default=None)
    # Admin sessions opened before 0003 are bound to no token: end them (their admin logs in again).
    op.get_bind().execute(sa.text("DELETE FROM sessions WHERE is_admin = :admin"), {"admin": True})


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        for column in ("finished_at", "cancel_requested", "error", "result", "prompts_done", "prompts_total", "status"):
            batch.drop_column(column)
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("admin_key")
        batch.drop_column("last_seen_at")
