"""The labeling database (SQLAlchemy 2 ORM). The schema itself is created and upgraded by the Alembic migrations
in `migrations/versions/`; `tests/labeling/app/test_migrations.py` checks that they produce exactly these tables.

    projects   -> prompts -> responses (uploaded, or sampled from a checkpoint: a `generations` row records how)
               -> tasks (one prompt, kind ranking | demonstration; binary: one response of it, 0005)
                        -> assignments (task x labeler, `overlap` per task)
                                                                  -> labels (append-only: every submission or
                                                                     edit is a new version; export reads the last)
    users (labelers, argon2 hashes)   sessions (hash of the cookie's token, CSRF token; admin sessions: user NULL)
    generations (0003: also the background job that samples them: status, progress, cancellation)
    adjudications (0004_adjudications: the lead's final answer to a task the labelers disagree on)
    0005_binary_feedback: binary tasks (`tasks.response_id`) and their answers (`labels.good`: thumbs up / down)
    0006_binary_review_chat_prompts: a binary verdict the lead writes (`adjudications.good`), and the chat-template
        rendering a prompt's responses were sampled from (`prompts.rendered`)
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Field limits, enforced by the API before anything is written (the columns are TEXT, so the database itself
# would accept more).
MAX_TEXT = 20_000  # characters of a prompt, a response or a demonstration
MAX_NAME = 200


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands DateTime(timezone=True) values back without their zone; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    instructions: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    locked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # migration 0002
    # 0004_adjudications: instructions per task kind ({"ranking": "...", ...}), shown after `instructions`
    kind_instructions: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "text", name="uq_prompts_project_text"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    # 0006: the text the checkpoint was prompted with when its responses were sampled through its chat template
    # (one user turn, the generation prompt); NULL when they were sampled from the text itself or uploaded. Labelers
    # read `text`; the export writes this, so the reward model and DPO train on the format the policy saw.
    rendered: Mapped[str | None] = mapped_column(Text, nullable=True)
    responses: Mapped[list[Response]] = relationship(order_by="Response.position", back_populates="prompt")


class Generation(Base):
    """One run of prefer's sampler over a project's prompts: the checkpoint and every sampling setting (0002)."""

    __tablename__ = "generations"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    checkpoint: Mapped[str] = mapped_column(Text)
    settings: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # A background job since 0003: queued -> running -> done | failed | cancelled; rows made before are "done".
    status: Mapped[str] = mapped_column(String(20), default="done")
    prompts_total: Mapped[int] = mapped_column(Integer, default=0)
    prompts_done: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "position", name="uq_responses_prompt_position"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # the index a ranking refers to
    text: Mapped[str] = mapped_column(Text)
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id"), nullable=True)  # 0002
    prompt: Mapped[Prompt] = relationship(back_populates="responses")


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Session(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the cookie's random token
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # 0003: idle expiry counts from here (updated at most once a minute); NULL in older rows: created_at counts.
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # 0003: admin sessions only: a slow digest of the admin token they were opened with (security.admin_key); a
    # server restarted with another token refuses them. NULL (older rows) is refused too.
    admin_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


WHOLE_PROMPT = text("response_id IS NULL")


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        # One ranking / demonstration task per prompt (a partial index: binary tasks share their prompt), and one
        # binary task per response (0005_binary_feedback).
        Index(
            "uq_tasks_whole_prompt_kind",
            "prompt_id",
            "kind",
            unique=True,
            sqlite_where=WHOLE_PROMPT,
            postgresql_where=WHOLE_PROMPT,
        ),
        UniqueConstraint("response_id", "kind", name="uq_tasks_response_kind"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    kind: Mapped[str] = mapped_column(String(20))  # "ranking" | "demonstration" | "binary"
    # binary tasks: the one response the labeler judges (0005); NULL for the kinds about the whole prompt
    response_id: Mapped[int | None] = mapped_column(ForeignKey("responses.id"), nullable=True)
    prompt: Mapped[Prompt] = relationship()
    response: Mapped[Response | None] = relationship()


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "user_id", name="uq_assignments_task_user"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | draft | skipped | submitted
    draft: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    task: Mapped[Task] = relationship()
    user: Mapped[User] = relationship()


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("assignment_id", "version", name="uq_labels_assignment_version"),
        UniqueConstraint("user_id", "idempotency_key", name="uq_labels_user_key"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    version: Mapped[int] = mapped_column(Integer)  # 1 = first submission, 2.. = edits
    idempotency_key: Mapped[str | None] = mapped_column(String(MAX_NAME), nullable=True)
    ranking: Mapped[list | None] = mapped_column(JSON, nullable=True)  # file form: [2, [0, 3], 1]
    demonstration: Mapped[str | None] = mapped_column(Text, nullable=True)
    quality: Mapped[int | None] = mapped_column(Integer, nullable=True)  # overall 1..7
    flags: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    good: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # binary tasks: thumbs up (True) / down (0005)


class Adjudication(Base):
    """The lead's final answer to one task (0004_adjudications): one labeler's label accepted (`label_id`), or a
    ranking / demonstration / binary verdict (`good`, 0006) the lead wrote. The export uses it instead of the
    labelers' answers to that task."""

    __tablename__ = "adjudications"
    __table_args__ = (UniqueConstraint("task_id", name="uq_adjudications_task"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"), nullable=True)
    ranking: Mapped[list | None] = mapped_column(JSON, nullable=True)
    demonstration: Mapped[str | None] = mapped_column(Text, nullable=True)
    good: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # binary tasks: the final thumbs up / down
    note: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
