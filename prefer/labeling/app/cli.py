"""`prefer serve`, `prefer export`, `prefer import` and `prefer round`: argument parsers and the calls (cli.py keeps
one line each)."""

from __future__ import annotations

import argparse
import contextlib
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
    export.add_argument(
        "--formats",
        default="rankings,demonstrations,pairs,binary",
        metavar="LIST",
        help="comma-separated files to write, of: rankings, demonstrations, pairs, pairs_conversational (the pairs "
        "in TRL's conversational format), binary ({prompt, completion, label}: thumbs up/down, for dpo.loss=kto) "
        "(default: rankings,demonstrations,pairs,binary)",
    )


def add_import_parser(commands) -> None:
    parser = commands.add_parser(
        "import",
        help="a new labeling project from an Argilla or Label Studio ranking export",
        description=_description(run_import),
    )
    parser.add_argument("file", help="the export: a JSON list of records (Argilla) or tasks (Label Studio)")
    parser.add_argument("--format", dest="tool", required=True, choices=["argilla", "label-studio"])
    parser.add_argument("--db", default=DEFAULT_DB, help=f"the labeling database (default: {DEFAULT_DB})")
    parser.add_argument("--project", required=True, help="the new project's name")
    parser.add_argument("--prompt-field", default="prompt", help="the field holding the prompt (default: prompt)")
    parser.add_argument("--question", help="Argilla: the ranking question (default: the only one)")
    parser.add_argument(
        "--items-field", help="Label Studio: the data field listing the responses (default: the only list)"
    )
    parser.add_argument(
        "--labeler",
        default="imported",
        help="the imported answers' labeler (NAME-ANNOTATOR with several annotators; default: imported)",
    )
    parser.add_argument(
        "--as-tasks", action="store_true", help="import prompts and responses only, as ranking tasks for --labelers"
    )
    _task_arguments(parser)


def _task_arguments(parser) -> None:
    parser.add_argument("--labelers", help="comma-separated labelers the tasks go to (default: every active one)")
    parser.add_argument("--overlap", type=int, default=1, help="labelers per task (default: 1)")


def add_round_parser(commands) -> None:
    parser = commands.add_parser(
        "round",
        help="a collection round: K responses per prompt from a checkpoint as a new batch of labeling tasks",
        description=_description(run_round),
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"the labeling database (default: {DEFAULT_DB})")
    parser.add_argument("--project", required=True, help="an existing project")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="the policy to sample from (e.g. a prefer ppo run's final/)")
    source.add_argument("--responses", help='or a responses JSONL ({"prompt", "responses": [...]}) made elsewhere')
    parser.add_argument(
        "--prompts", help="a prompts JSONL: add these prompts and sample for them (default: every prompt not labeled)"
    )
    parser.add_argument("--kind", default="ranking", choices=["ranking", "binary"], help="task kind (ranking)")
    _task_arguments(parser)
    parser.add_argument("--num-responses", type=int, default=4, help="K responses per prompt (default: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--block", default="both", choices=["none", "bad", "both"], help="blocked outputs (both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


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


@contextlib.contextmanager
def _database(db_argument: str, *, create: bool = False):
    """A sessionmaker on the database of --db; `create`: make (or upgrade) it as prefer serve does, else it must
    exist at the latest migration."""
    check_db_argument(db_argument, exists=not create)
    database = import_serve_extra("prefer.labeling.app.db")  # after the argument checks
    url = database.normalize_url(db_argument)
    if not create and url.startswith("sqlite") and not os.path.exists(url.split("///", 1)[1]):
        raise PreferError(f"--db: {db_argument}: no such database")
    engine = database.make_engine(url)
    try:
        if create:
            database.upgrade(engine)
        elif database.current_revision(engine) != database.head_revision(engine):
            raise PreferError(
                f"--db: {db_argument}: the schema is not at the latest migration; run prefer serve on it once to "
                "upgrade"
            )
        yield database.make_sessionmaker(engine)
    finally:
        engine.dispose()


def _names(value: str | None, option: str, known=None) -> list[str] | None:
    names = [name.strip() for name in value.split(",") if name.strip()] if value else None
    unknown = sorted(set(names or []) - set(known)) if known is not None else []
    if unknown or (value is not None and not names):
        raise PreferError(f"{option}: {unknown or value!r}: not among {list(known or [])}")
    return names


def run_export(args: argparse.Namespace) -> int:
    """Write rankings.jsonl and demonstrations.jsonl (read unchanged by prefer reward and prefer sft),
    pairs.jsonl ({prompt, chosen, rejected}) and binary.jsonl ({prompt, completion, label}: binary feedback, read by
    prefer dpo dpo.loss=kto) of one project, and on request pairs_conversational.jsonl (TRL's conversational
    format); each record carries its labeler and label in a 'provenance' field."""
    check_db_argument(args.db, exists=True)  # before the serve extra is imported
    export = import_serve_extra("prefer.labeling.app.export")
    kinds = _names(args.formats, "--formats", export.EXPORT_KINDS)
    select = import_serve_extra("sqlalchemy").select
    Project = import_serve_extra("prefer.labeling.app.models").Project  # noqa: N806 (a class)

    with _database(args.db) as sessionmaker:
        with sessionmaker() as db:
            project = db.scalar(select(Project).where(Project.name == args.project))
            if project is None:
                names = list(db.scalars(select(Project.name)))
                raise PreferError(f"--project: no project named {args.project!r} (projects: {names})")
            written = export.write_export(db, project, args.out, kinds)
            counts = {kind: sum(1 for _ in open(path, encoding="utf-8")) for kind, path in written.items()}
    print(
        json.dumps(
            {"project": args.project, "files": {k: str(v) for k, v in written.items()}, "records": counts}, indent=2
        )
    )
    return 0


def _read_file(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise PreferError(f"{option}: {path}: {error.strerror or error}") from None


def run_import(args: argparse.Namespace) -> int:
    """Make a new project from an Argilla (records.to_json) or Label Studio (JSON export, List + Ranker) ranking
    export: its prompts and responses, and each annotator's ranking as a label of an imported labeler (which cannot
    log in), or with --as-tasks as ranking tasks for this app's labelers. A malformed file is refused with one line
    naming the file and the record, and nothing is written."""
    if args.overlap < 1:
        raise PreferError("--overlap: at least 1")
    check_db_argument(args.db, exists=False)  # before the serve extra is imported
    interop = import_serve_extra("prefer.labeling.app.interop")
    records = interop.read_export(
        args.file, args.tool, prompt_field=args.prompt_field, question=args.question, items_field=args.items_field
    )
    as_tasks = {"overlap": args.overlap, "labelers": _names(args.labelers, "--labelers")} if args.as_tasks else None
    with _database(args.db, create=True) as sessionmaker:
        with sessionmaker() as db:
            result = interop.import_records(db, args.project, records, labeler=args.labeler, as_tasks=as_tasks)
            db.commit()
    print(json.dumps({"file": args.file, **result}, indent=2))
    return 0


def run_round(args: argparse.Namespace) -> int:
    """A collection round from the current policy: sample --num-responses responses to each prompt (those of
    --prompts, added to the project first, else every prompt without a ranking or binary task) from --checkpoint, as
    the app's generation job does, or take them from a --responses JSONL, and make those prompts a new batch of
    ranking (or binary) tasks for --labelers. Then label, prefer export, prefer reward, prefer ppo, and run the
    next round from the new policy (docs/labeling-app.md)."""
    if args.overlap < 1:
        raise PreferError("--overlap: at least 1")
    check_db_argument(args.db, exists=True)  # before the serve extra is imported
    jobs = import_serve_extra("prefer.labeling.app.jobs")
    service = import_serve_extra("prefer.labeling.app.service")
    tasks = {"kind": args.kind, "overlap": args.overlap, "labelers": _names(args.labelers, "--labelers")}
    prompts = _read_file(args.prompts, "--prompts") if args.prompts else None
    name = Path(args.prompts).name if args.prompts else "prompts.jsonl"
    with _database(args.db) as sessionmaker:
        try:
            if args.responses is not None:
                content = _read_file(args.responses, "--responses")
                result = jobs.responses_round(sessionmaker, args.project, content, Path(args.responses).name, tasks)
            else:
                settings = {
                    "num_responses": args.num_responses,
                    "max_new_tokens": args.max_new_tokens,
                    "temperature": args.temperature,
                    "top_p": args.top_p,
                    "block": args.block,
                    "seed": args.seed,
                }
                result = jobs.collect_round(
                    sessionmaker,
                    args.project,
                    checkpoint=args.checkpoint,
                    settings=settings,
                    tasks=tasks,
                    prompts=prompts,
                    prompts_name=name,
                    device=args.device,
                )
        except service.AppError as error:
            raise PreferError(error.message) from None
    print(json.dumps(result, indent=2))
    return 0
