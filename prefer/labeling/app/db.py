"""Engines and schema upgrades for the labeling app: SQLite (a file, the default) or PostgreSQL through psycopg 3.

SQLite runs in WAL mode with synchronous=FULL (a commit is on disk before the client hears "ok", so a killed
server loses no acknowledged submission) and every transaction starts with BEGIN IMMEDIATE, so concurrent writers
queue on the busy timeout instead of failing on a read-to-write lock upgrade (the pysqlite recipe of SQLAlchemy's
SQLite dialect documentation). Read-only work (GET requests, looking up who is asking, a login's password
lookup) goes through `make_read_sessionmaker`, whose transactions start with a plain (deferred) BEGIN: on WAL it
reads a snapshot and never waits for, nor holds, the write lock.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import sessionmaker

from prefer.errors import PreferError

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "prefer_read_only"  # an execution option: this connection's transactions only read


def normalize_url(url: str) -> str:
    """A path or sqlite:///... or postgresql://... (psycopg 3 driver implied)."""
    if "://" not in url:
        url = f"sqlite:///{Path(url).resolve()}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise PreferError(f"--db: {url!r} is not a database URL (sqlite:///FILE or postgresql://...)") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise PreferError(f"--db: backend {parsed.get_backend_name()!r} is not supported (sqlite or postgresql)")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=20, max_overflow=20
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection):
            read_only = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker:
    """Sessions for reading only: on SQLite their transactions take no write lock (a write in one would have to
    upgrade its lock, and may fail with "database is locked"; write through `make_sessionmaker`'s sessions)."""
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


def alembic_config(engine: Engine):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema (Alembic); run once before the server's workers start."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
