"""`prefer serve` and `prefer export`: argument parsers and the two calls (cli.py keeps one line each)."""

from __future__ import annotations

import argparse
import json
import os

from prefer.errors import PreferError

DEFAULT_DB = "prefer-labels.db"


def add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="the labeling web app: K-way rankings and demonstrations by human labelers",
        description="Start the labeling web app (admin at /admin, labelers at /). The admin token comes from "
        "the environment variable named by --admin-token-env (default PREFER_ADMIN_TOKEN) or "
        "--admin-token; it is never logged.",
    )
    serve.add_argument(
        "--db",
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
        default="PREFER_ADMIN_TOKEN",
        metavar="NAME",
        help="environment variable holding the admin token (default: PREFER_ADMIN_TOKEN)",
    )
    serve.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    serve.add_argument(
        "--password-hash",
        default="standard",
        choices=["standard", "test"],
        help="argon2id cost for new passwords: standard (64 MiB, 3 passes) or test (cheap: test suites only)",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a labeling project's rankings / demonstrations / pairs JSONL",
        description="Write rankings.jsonl and demonstrations.jsonl (read unchanged by prefer reward and prefer "
        "sft) and pairs.jsonl ({prompt, chosen, rejected}) of one project; each record carries its "
        "labeler and label in a 'provenance' field.",
    )
    export.add_argument("--db", default=DEFAULT_DB, help=f"the labeling database (default: {DEFAULT_DB})")
    export.add_argument("--project", required=True, help="project name")
    export.add_argument("--out", required=True, help="output directory")


def run_serve(args: argparse.Namespace) -> int:
    from prefer.labeling.app.server import serve

    if not 0 < args.port < 65536:
        raise PreferError(f"--port: {args.port} is not a port number")
    if args.workers < 1:
        raise PreferError("--workers: at least 1")
    serve(
        db_url=args.db,
        host=args.host,
        port=args.port,
        admin_token=args.admin_token,
        token_env=args.admin_token_env,
        workers=args.workers,
        log_level=args.log_level,
        hash_profile=args.password_hash,
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from prefer.labeling.app import db as database
    from prefer.labeling.app.export import write_export
    from prefer.labeling.app.models import Project

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
