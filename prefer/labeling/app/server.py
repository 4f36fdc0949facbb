"""`prefer serve`: the FastAPI app (JSON API + Jinja pages + its own static assets, no CDN) and its launcher.

Pages render no answer data server-side beyond escaped text; the scripts fill them through the API with
`textContent`, and a Content-Security-Policy allowing only this origin's own script files means a `<script>` in a
prompt or response can never run.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from prefer.errors import PreferError
from prefer.labeling.app import api, jobs, service
from prefer.labeling.app import db as database
from prefer.labeling.app.deps import DBDep, Identity, OptionalIdentity
from prefer.labeling.app.models import Project
from prefer.labeling.app.security import LoginBackoff, admin_key, set_hash_profile
from prefer.labeling.app.service import AppError

HERE = Path(__file__).parent
DEFAULT_TOKEN_ENV = "PREFER_ADMIN_TOKEN"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
MIN_TOKEN = 16
IDLE_MINUTES = 120  # a session unused this long ends
MAX_HOURS = 12  # and every session ends this long after its login (a working day)


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _add_pages(app: FastAPI, templates: Jinja2Templates) -> None:
    """The HTML pages: a labeler's queue, account and labeling page; the admin's login, projects and project."""

    def page(request: Request, name: str, identity: Identity | None, **context):
        csrf = identity.session.csrf_token if identity and identity.session else ""
        return templates.TemplateResponse(request, name, {"csrf": csrf, "identity": identity, **context})

    @app.get("/", include_in_schema=False)
    def queue_page(request: Request, identity: OptionalIdentity):
        if identity is None or identity.user is None:
            return RedirectResponse("/admin" if identity and identity.is_admin else "/login", 303)
        return page(request, "queue.html", identity)

    @app.get("/account", include_in_schema=False)
    def account_page(request: Request, identity: OptionalIdentity):
        if identity is None or identity.user is None:
            return RedirectResponse("/login", 303)
        return page(request, "account.html", identity)

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request):
        return page(request, "login.html", None)

    @app.get("/label/{assignment_id}", include_in_schema=False)
    def label_page(assignment_id: int, request: Request, identity: OptionalIdentity, db: DBDep):
        if identity is None or identity.user is None:
            return RedirectResponse("/login", 303)
        service.own_assignment(db, identity.user, assignment_id)
        return page(request, "label.html", identity, assignment_id=assignment_id, flags=service.FLAGS)

    @app.get("/admin/login", include_in_schema=False)
    def admin_login_page(request: Request):
        return page(request, "admin_login.html", None)

    @app.get("/admin", include_in_schema=False)
    def admin_page(request: Request, identity: OptionalIdentity, db: DBDep):
        if identity is None or not identity.is_admin:
            return RedirectResponse("/admin/login", 303)
        return page(request, "admin.html", identity, projects=list(db.scalars(select(Project).order_by(Project.id))))

    @app.get("/admin/projects/{project_id}", include_in_schema=False)
    def admin_project_page(project_id: int, request: Request, identity: OptionalIdentity, db: DBDep):
        if identity is None or not identity.is_admin:
            return RedirectResponse("/admin/login", 303)
        return page(request, "admin_project.html", identity, project=service.get_project(db, project_id))


# The routes that run a password or token hash (argon2id / scrypt: ~0.5 s of one core) for anyone who asks.
PASSWORD_ROUTES = frozenset({"/api/login", "/api/password", "/api/admin/login"})


def create_app(
    db_url: str,
    admin_token: str,
    *,
    max_body_bytes: int = 32 * 2**20,
    hash_profile: str = "standard",
    concurrency: int = 16,
    secure_cookies: bool = False,
    session_idle_minutes: float = IDLE_MINUTES,
    session_max_hours: float = MAX_HOURS,
) -> FastAPI:
    if len(admin_token) < MIN_TOKEN:
        raise PreferError(f"admin token: at least {MIN_TOKEN} characters (it guards every admin endpoint)")
    if not (session_idle_minutes > 0 and session_max_hours > 0):
        raise PreferError("--session-idle-minutes, --session-max-hours: must be positive")
    set_hash_profile(hash_profile)
    app = FastAPI(title="prefer labeling", docs_url=None, redoc_url=None, openapi_url=None)
    # Starlette's limit counts the bytes as they stream in, so a chunked body (no Content-Length) is cut off with 413
    # once it passes the limit, on every route, before it is read whole. Added first, it runs inside
    # `limits_and_headers` (below), which refuses a declared Content-Length over the limit before any byte is read.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_body_bytes)
    engine = database.make_engine(db_url)
    app.state.engine = engine
    app.state.sessionmaker = database.make_sessionmaker(engine)
    app.state.read_sessionmaker = database.make_read_sessionmaker(engine)
    app.state.admin_token = admin_token
    app.state.admin_key = admin_key(admin_token)
    app.state.secure_cookies = secure_cookies
    app.state.session_idle = timedelta(minutes=session_idle_minutes)
    app.state.session_max = timedelta(hours=session_max_hours)
    app.state.backoff = LoginBackoff()
    app.state.jobs = {}  # generation id -> its thread (this process's)
    templates = Jinja2Templates(directory=HERE / "templates")
    # Requests beyond this wait here, before taking a database connection: FastAPI runs a request's sync
    # dependencies and its endpoint as separate thread-pool calls, so without a cap 1,000 concurrent requests
    # hold every pooled connection while waiting for a thread, and time out.
    in_flight = asyncio.Semaphore(concurrency)
    # Password checks wait in their own, smaller queue: a storm of wrong logins then holds no slot of `in_flight`,
    # and a labeler's requests never queue behind it (bench/app_latency.py measured 6.1 s -> 0.17 s median).
    password_checks = asyncio.Semaphore(os.cpu_count() or 1)

    @app.middleware("http")
    async def limits_and_headers(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return JSONResponse({"detail": f"request body: {length} bytes; at most {max_body_bytes}"}, 413)
        async with password_checks if request.url.path in PASSWORD_ROUTES else in_flight:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(AppError)
    async def app_error(_request, error: AppError):
        return JSONResponse({"detail": error.message}, error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, error: RequestValidationError):
        errors = error.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        return JSONResponse(
            {
                "detail": f"{_field(first['loc'])}: {first['msg']}",
                "errors": [{"field": _field(e["loc"]), "message": e["msg"]} for e in errors],
            },
            422,
        )

    app.include_router(api.router)
    app.include_router(api.admin)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    _add_pages(app, templates)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):
        detail = error.detail
        if error.status_code == 413:  # the streamed-body limit's own exception says only "Content Too Large"
            detail = f"request body: more than {max_body_bytes} bytes; at most {max_body_bytes}"
        return JSONResponse({"detail": detail}, error.status_code, headers=getattr(error, "headers", None))

    return app


def app_from_env() -> FastAPI:
    """The factory uvicorn's workers call: `prefer serve` passes the settings through the environment (the token
    under its own variable name, never on a command line the workers' ps would show)."""
    token_env = os.environ.get("PREFER_SERVE_TOKEN_ENV", DEFAULT_TOKEN_ENV)
    return create_app(
        os.environ["PREFER_SERVE_DB"],
        os.environ[token_env],
        max_body_bytes=int(os.environ.get("PREFER_SERVE_MAX_BODY", 32 * 2**20)),
        hash_profile=os.environ.get("PREFER_SERVE_HASH_PROFILE", "standard"),
        secure_cookies=os.environ.get("PREFER_SERVE_SECURE_COOKIES") == "1",
        session_idle_minutes=float(os.environ.get("PREFER_SERVE_SESSION_IDLE_MINUTES", IDLE_MINUTES)),
        session_max_hours=float(os.environ.get("PREFER_SERVE_SESSION_MAX_HOURS", MAX_HOURS)),
    )


def serve(
    *,
    db_url: str,
    host: str,
    port: int,
    admin_token: str | None,
    token_env: str,
    workers: int = 1,
    log_level: str = "info",
    hash_profile: str = "standard",
    secure_cookies: bool = False,
    session_idle_minutes: float = IDLE_MINUTES,
    session_max_hours: float = MAX_HOURS,
) -> None:
    import uvicorn

    token = admin_token or os.environ.get(token_env)
    if not token:
        raise PreferError(f"admin token: set the environment variable {token_env} (or pass --admin-token)")
    if len(token) < MIN_TOKEN:
        raise PreferError(f"admin token: at least {MIN_TOKEN} characters (it guards every admin endpoint)")
    url = database.normalize_url(db_url)
    engine = database.make_engine(url)
    try:
        database.upgrade(engine)  # once, before the workers start
        interrupted = jobs.fail_interrupted(database.make_sessionmaker(engine))
    except Exception as error:  # noqa: BLE001 - a connection or migration failure is the user's to fix
        raise PreferError(f"--db: cannot open or upgrade the database: {type(error).__name__}: {error}") from None
    finally:
        engine.dispose()
    os.environ["PREFER_SERVE_DB"] = url
    os.environ["PREFER_SERVE_TOKEN_ENV"] = token_env
    os.environ["PREFER_SERVE_HASH_PROFILE"] = hash_profile
    os.environ["PREFER_SERVE_SECURE_COOKIES"] = "1" if secure_cookies else "0"
    os.environ["PREFER_SERVE_SESSION_IDLE_MINUTES"] = str(session_idle_minutes)
    os.environ["PREFER_SERVE_SESSION_MAX_HOURS"] = str(session_max_hours)
    os.environ[token_env] = token
    if interrupted:
        print(f"[serve] {interrupted} generation job(s) of a stopped server marked failed", flush=True)
    print(
        f"[serve] http://{host}:{port}/ (labelers)  http://{host}:{port}/admin (admin; token from "
        f"{'--admin-token' if admin_token else '$' + token_env})",
        flush=True,
    )
    uvicorn.run(
        "prefer.labeling.app.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
