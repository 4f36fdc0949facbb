"""`prefer serve` and `prefer export`: argument parsers and the two calls (cli.py keeps one line each)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from prefer.errors import PreferError

DEFAULT_DB = "prefer-labels.db"
# The keywords of server.serve: each is the `dest` of the `prefer serve` option that sets it.
SERVE_KEYWORDS = (
    "db_url",
    "host",
    "port",
    "admin_token",
    "token_env",
    "workers",
    "log_level",
    "hash_profile",
    "secure_cookies",
    "session_idle_minutes",
    "session_max_hours",
)


def add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="the labeling web app: K-way rankings and demonstrations by human labelers",
        description=_description(run_serve),
    )
    serve.add_argument(
        "--db",
        dest="db_url",
        metavar="DB",
        default=DEFAULT_DB,
        help=f"database: a SQLite file path or sqlite:///FILE, or postgresql://USER:PASS@HOST/DB "
        f"(default: {DEFAULT_DB})",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--admin-token",
        help="the admin token (prefer the environment variable: a command line "
        "is visible to other users of the machine)",
    )
    serve.add_argument(
        "--admin-token-env",
        dest="token_env",
        default="PREFER_ADMIN_TOKEN",
        metavar="NAME",
        help="environment variable holding the admin token (default: PREFER_ADMIN_TOKEN)",
    )
    serve.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    serve.add_argument(
        "--password-hash",
        dest="hash_profile",
        default="standard",
        choices=["standard", "test"],
        help="argon2id cost for new passwords: standard (64 MiB, 3 passes) or test (cheap: test suites only)",
    )
    serve.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the session cookie Secure (sent over HTTPS only): use it whenever the app is reached through "
        "HTTPS, e.g. behind a TLS-terminating proxy",
    )
    serve.add_argument(
        "--session-idle-minutes",
        type=float,
        default=120.0,
        metavar="M",
        help="a session unused for M minutes ends (default: 120)",
    )
    serve.add_argument(
        "--session-max-hours",
        type=float,
        default=12.0,
        metavar="H",
        help="every session ends H hours after its login, however busy (default: 12)",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a labeling project's rankings / demonstrations / pairs JSONL",
        description=_description(run_export),
    )
    export.add_argument("--db", default=DEFAULT_DB, help=f"the labeling database (default: {DEFAULT_DB})")
    export.add_argument("--project", required=True, help="project name")
    export.add_argument("--out", required=True, help="output directory")


def _description(run) -> str:
    """A command's --help description: the docstring of the function that runs it, as one paragraph."""
    return " ".join(run.__doc__.split())


def check_db_argument(db: str, *, exists: bool) -> None:
    """The --db a user can get wrong, checked without the serve extra (sqlalchemy): a supported backend, a SQLite
    file (not in memory, not a directory) in a directory that exists; `exists`: the file must already be there."""
    scheme, sep, rest = db.partition("://")
    if sep and scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres"):
        raise PreferError(
            f"--db: backend {scheme.split('+')[0]!r} is not supported (sqlite:///FILE or postgresql://...)"
        )
    if sep and scheme.split("+")[0] != "sqlite":
        return
    path = rest.removeprefix("/").split("?")[0] if sep else db
    if not path or path == ":memory:":
        raise PreferError(f"--db: {db!r} names no file; an in-memory database is lost on exit (sqlite:///FILE)")
    path_ = Path(path).expanduser()
    if path_.is_dir():
        raise PreferError(f"--db: {db}: is a directory; name the database file (e.g. {path_ / DEFAULT_DB})")
    if exists and not path_.is_file():
        raise PreferError(f"--db: {db}: no such database")
    if not path_.parent.is_dir():
        raise PreferError(f"--db: {db}: the directory {path_.parent} does not exist")


def import_serve_extra(module: str):
    """Import a module of the labeling app; a missing package of the `serve` extra is one line naming the install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "prefer":
            raise
        raise PreferError(
            f"the labeling app needs the serve extra (no module named {error.name!r}): pip install 'prefer[serve]'"
        ) from None


def run_serve(args: argparse.Namespace) -> int:
    """Start the labeling web app (admin at /admin, labelers at /). The admin token comes from the environment
    variable named by --admin-token-env (default PREFER_ADMIN_TOKEN) or --admin-token; it is never logged."""
    if not 0 < args.port < 65536:
        raise PreferError(f"--port: {args.port} is not a port number")
    if args.workers < 1:
        raise PreferError("--workers: at least 1")
    for option, value in (
        ("--session-idle-minutes", args.session_idle_minutes),
        ("--session-max-hours", args.session_max_hours),
    ):
        if not value > 0:
            raise PreferError(f"{option}: must be positive, got {value}")
    check_db_argument(args.db_url, exists=False)
    serve = import_serve_extra("prefer.labeling.app.server").serve  # after every argument check
    serve(**{keyword: getattr(args, keyword) for keyword in SERVE_KEYWORDS})
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write rankings.jsonl and demonstrations.jsonl (read unchanged by prefer reward and prefer sft) and
    pairs.jsonl ({prompt, chosen, rejected}) of one project; each record carries its labeler and label in a
    'provenance' field."""
    check_db_argument(args.db, exists=True)
    select = import_serve_extra("sqlalchemy").select  # after the argument checks
    database = import_serve_extra("prefer.labeling.app.db")
    write_export = import_serve_extra("prefer.labeling.app.export").write_export
    Project = import_serve_extra("prefer.labeling.app.models").Project  # noqa: N806 (a class)

    url = database.normalize_url(args.db)
    if url.startswith("sqlite") and not os.path.exists(url.split("///", 1)[1]):
        raise PreferError(f"--db: {args.db}: no such database")
    engine = database.make_engine(url)
    try:
        if database.current_revision(engine) != database.head_revision(engine):
            raise PreferError(
                f"--db: {args.db}: the schema is not at the latest migration; run prefer serve on it once to upgrade"
            )
        with database.make_sessionmaker(engine)() as db:
            project = db.scalar(select(Project).where(Project.name == args.project))
            if project is None:
                names = list(db.scalars(select(Project.name)))
                raise PreferError(f"--project: no project named {args.project!r} (projects: {names})")
            written = write_export(db, project, args.out)
            counts = {kind: sum(1 for _ in open(path, encoding="utf-8")) for kind, path in written.items()}
    finally:
        engine.dispose()
    print(
        json.dumps(
            {"project": args.project, "files": {k: str(v) for k, v in written.items()}, "records": counts}, indent=2
        )
    )
    return 0
