"""The JSON API: login, the labeler's queue and answers, and the admin's projects, data, labelers, tasks,
progress, agreement, lock and export. Every request is one transaction: it commits whole or not at all.

Slow work stays out of write transactions (on SQLite a write transaction holds the database's one write lock):
password checks and hashes run before the request writes anything, and responses sampled from a checkpoint are
made by a background job (jobs.py) that writes one short transaction per batch."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DB

from prefer.data.formats import MAX_RESPONSES, MIN_RESPONSES
from prefer.labeling.app import export, jobs, review, service
from prefer.labeling.app.deps import AnyIdentity, DBDep, Labeler, require_admin
from prefer.labeling.app.models import MAX_NAME, MAX_TEXT, Session, User, now
from prefer.labeling.app.security import (
    COOKIE,
    hash_password,
    new_token,
    same_secret,
    token_digest,
    verify_password,
)

router = APIRouter(prefix="/api")
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return service.NUL in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value):
        # PostgreSQL's text type cannot hold NUL; no field of this app has a use for one either.
        if _has_nul(value):
            raise ValueError("contains a NUL character (\\u0000), which no text may hold")
        return value


class LoginIn(Strict):
    username: Name
    password: Annotated[str, Field(min_length=1, max_length=1000)]


class AdminLoginIn(Strict):
    token: Annotated[str, Field(min_length=1, max_length=1000)]


class AnswerIn(Strict):
    ranking: Annotated[list[StrictInt | list[StrictInt]] | None, Field(max_length=MAX_RESPONSES)] = None
    demonstration: Annotated[str | None, Field(max_length=MAX_TEXT)] = None
    good: StrictBool | None = None  # binary tasks: thumbs up (true) or down (false)
    quality: Annotated[StrictInt | None, Field(ge=1, le=7)] = None
    flags: Annotated[list[Literal[service.FLAGS]] | None, Field(max_length=len(service.FLAGS))] = None


Instructions = Annotated[str, Field(max_length=MAX_TEXT)]


class ProjectIn(Strict):
    name: Name
    instructions: Instructions = ""
    kind_instructions: Annotated[dict[str, Instructions], Field(max_length=10)] | None = None  # per task kind


class LabelerIn(Strict):
    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=1000)]


class TasksIn(Strict):
    kind: Literal["ranking", "demonstration", "binary"]
    overlap: Annotated[int, Field(ge=1, le=100)] = 1
    labelers: list[Name] | None = None


class GenerateIn(Strict):
    checkpoint: Annotated[str, Field(min_length=1, max_length=4096)]
    num_responses: Annotated[int, Field(ge=MIN_RESPONSES, le=MAX_RESPONSES)] = 4
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    temperature: Annotated[float, Field(ge=0, le=10)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    block: Literal["none", "bad", "both"] = "both"
    seed: int = 0
    device: Annotated[str, Field(max_length=32)] = "auto"


class LockIn(Strict):
    locked: bool


Password = Annotated[str, Field(min_length=8, max_length=1000)]


class PasswordIn(Strict):
    current_password: Annotated[str, Field(min_length=1, max_length=1000)]
    new_password: Password


class LabelerUpdateIn(Strict):
    active: bool | None = None
    password: Password | None = None


def _commit(db: DB, result):
    db.commit()
    return result


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _too_many(wait: int):
    return HTTPException(429, f"too many failed logins: try again in {wait} s", headers={"Retry-After": str(wait)})


def _start_session(request: Request, response: Response, *, user: User | None, is_admin: bool) -> dict:
    state = request.app.state
    token, csrf, moment = new_token(), new_token(), now()
    with state.sessionmaker() as db:  # one short write transaction
        service.prune_sessions(db, moment - state.session_max)
        db.add(
            Session(
                token_hash=token_digest(token),
                user_id=user.id if user else None,
                is_admin=is_admin,
                csrf_token=csrf,
                created_at=moment,
                last_seen_at=moment,
                admin_key=state.admin_key if is_admin else None,
            )
        )
        db.commit()
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(state.session_max.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=state.secure_cookies,
        path="/",
    )
    return {"csrf_token": csrf, "username": user.username if user else None, "admin": is_admin}


# Login needs a JSON body, which a cross-site form cannot send without a CORS preflight (login CSRF). The account
# is read in a read-only transaction, the password checked (argon2, ~0.5 s) in none, and the session written in a
# short transaction of its own: a storm of wrong logins never holds the write lock.
@router.post("/login")
def login(body: LoginIn, request: Request, response: Response):
    state = request.app.state
    keys = [("user", body.username.lower()), ("address", client_address(request))]
    wait = state.backoff.attempt(keys)
    if wait:
        raise _too_many(wait)
    with state.read_sessionmaker() as db:
        user = db.scalar(select(User).where(User.username == body.username))
    if not verify_password(user.password_hash if user else None, body.password) or not user.active:
        raise HTTPException(401, "username or password: wrong")
    state.backoff.succeeded(keys)
    return _start_session(request, response, user=user, is_admin=False)


@router.post("/admin/login")
def admin_login(body: AdminLoginIn, request: Request, response: Response):
    state = request.app.state
    keys = [("admin", client_address(request))]
    wait = state.backoff.check(keys)  # the comparison takes no time: count only the wrong ones
    if wait:
        raise _too_many(wait)
    if not same_secret(body.token, state.admin_token):
        state.backoff.failed(keys)
        raise HTTPException(401, "token: wrong admin token")
    state.backoff.succeeded(keys)
    return _start_session(request, response, user=None, is_admin=True)


@router.post("/logout")
def logout(request: Request, response: Response, db: DBDep):
    from prefer.labeling.app.deps import identify

    identity = identify(request)  # checks the CSRF token
    if identity is not None and identity.session is not None:
        db.execute(delete(Session).where(Session.id == identity.session.id))
        db.commit()
    response.delete_cookie(COOKIE, path="/")
    return {"logged_out": True}


@router.post("/logout/everywhere")
def logout_everywhere(identity: AnyIdentity, response: Response, db: DBDep):
    """Ends every session of this labeler (an admin: every admin session), this one included."""
    ended = service.end_sessions(db, user_id=identity.user.id if identity.user else None)
    db.commit()
    response.delete_cookie(COOKIE, path="/")
    return {"logged_out": True, "sessions_ended": ended}


@router.post("/password")
def change_password(body: PasswordIn, request: Request, identity: AnyIdentity, db: DBDep):
    """A labeler changes its own password; its other sessions end. Wrong current passwords back off like logins."""
    if identity.user is None:
        raise HTTPException(403, "this endpoint is for labelers (the admin's token is set when the server starts)")
    state = request.app.state
    keys = [("user", identity.user.username.lower()), ("address", client_address(request))]
    wait = state.backoff.attempt(keys)
    if wait:
        raise _too_many(wait)
    with state.read_sessionmaker() as read:
        current_hash = read.scalar(select(User.password_hash).where(User.id == identity.user.id))
    if not verify_password(current_hash, body.current_password):  # in no transaction
        raise HTTPException(403, "current_password: wrong password")
    state.backoff.succeeded(keys)
    new_hash = hash_password(body.new_password)  # also before the write transaction begins
    user = db.get(User, identity.user.id)
    user.password_hash = new_hash
    ended = service.end_sessions(db, user_id=user.id, keep=identity.session.id)
    db.commit()
    return {"password_changed": True, "other_sessions_ended": ended}


# ----- labelers -----


@router.get("/queue")
def get_queue(user: Labeler, db: DBDep):
    return {"username": user.username, "assignments": service.queue(db, user)}


@router.get("/assignments/{assignment_id}")
def get_assignment(assignment_id: int, user: Labeler, db: DBDep):
    return service.assignment_view(db, service.own_assignment(db, user, assignment_id))


@router.put("/assignments/{assignment_id}/draft")
def put_draft(assignment_id: int, body: AnswerIn, user: Labeler, db: DBDep):
    assignment = service.own_assignment(db, user, assignment_id, for_update=True)
    service.save_draft(db, assignment, body.model_dump())
    return _commit(db, {"assignment_id": assignment_id, "status": assignment.status})


@router.post("/assignments/{assignment_id}/skip")
def post_skip(assignment_id: int, user: Labeler, db: DBDep):
    assignment = service.own_assignment(db, user, assignment_id, for_update=True)
    service.skip(db, assignment)
    return _commit(db, {"assignment_id": assignment_id, "status": assignment.status})


@router.post("/assignments/{assignment_id}/submit")
def post_submit(
    assignment_id: int,
    body: AnswerIn,
    response: Response,
    user: Labeler,
    db: DBDep,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_NAME)] = None,
):
    answer = body.model_dump()
    for attempt in range(2):
        try:
            label, replayed = service.submit(db, user, assignment_id, answer, idempotency_key)
            db.commit()
            break
        except IntegrityError as error:
            # Two requests with one key raced past the lookup (PostgreSQL): the loser replays the winner's label.
            db.rollback()
            if attempt or not service.is_duplicate_key(error):
                raise
    response.status_code = 200 if replayed else 201
    return {"assignment_id": assignment_id, "label_id": label.id, "version": label.version, "replayed": replayed}


# ----- admin -----

admin = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])


@admin.get("/projects")
def list_projects(db: DBDep):
    from prefer.labeling.app.models import Project

    return {
        "projects": [
            {"id": p.id, "name": p.name, "locked": p.locked_at is not None}
            for p in db.scalars(select(Project).order_by(Project.id))
        ]
    }


@admin.post("/projects", status_code=201)
def post_project(body: ProjectIn, db: DBDep):
    project = service.create_project(db, service.check_name("name", body.name), body.instructions)
    review.set_instructions(project, None, body.kind_instructions)
    return _commit(db, {"id": project.id, "name": project.name})


def _upload(db: DB, request: Request, project_id: int, content: bytes, loader) -> dict:
    # The request's own session: on SQLite the admin check already holds its (BEGIN IMMEDIATE) transaction.
    project = service.get_project(db, project_id)
    return _commit(db, loader(db, project, content, request.query_params.get("filename", "upload.jsonl")))


@admin.post("/projects/{project_id}/prompts")
async def post_prompts(project_id: int, request: Request, db: DBDep):
    """Body: a prompts JSONL file ({"prompt"} per line), as `prefer ppo` reads it."""
    return await run_in_threadpool(_upload, db, request, project_id, await request.body(), service.load_prompts)


@admin.post("/projects/{project_id}/responses")
async def post_responses(project_id: int, request: Request, db: DBDep):
    """Body: JSONL, {"prompt", "responses": [K = 2..9]} per line; replaces the prompts' responses."""
    return await run_in_threadpool(_upload, db, request, project_id, await request.body(), service.upload_responses)


@admin.post("/projects/{project_id}/generate", status_code=202)
def post_generate(project_id: int, body: GenerateIn, request: Request, db: DBDep):
    """K samples per prompt (prompts without a ranking task) from a checkpoint, as a background job: 202 with its
    id at once; GET /api/admin/generations/{id} shows its progress, POST .../cancel stops it between batches."""
    settings = body.model_dump(exclude={"checkpoint", "device"})
    generation, prompts = jobs.create(db, service.get_project(db, project_id), body.checkpoint, settings)
    db.commit()
    jobs.start(request.app.state, generation.id, prompts, body.checkpoint, settings, device=body.device)
    return jobs.view(generation)


@admin.get("/projects/{project_id}/generations")
def list_generations(project_id: int, db: DBDep):
    return {"generations": jobs.list_views(db, service.get_project(db, project_id))}


@admin.get("/generations/{generation_id}")
def get_generation(generation_id: int, db: DBDep):
    return jobs.view(jobs.get(db, generation_id))


@admin.post("/generations/{generation_id}/cancel")
def post_cancel_generation(generation_id: int, db: DBDep):
    generation = jobs.request_cancel(db, generation_id)
    return _commit(db, jobs.view(generation))


@admin.get("/labelers")
def list_labelers(db: DBDep):
    return {
        "labelers": [
            {"id": u.id, "username": u.username, "active": u.active} for u in db.scalars(select(User).order_by(User.id))
        ]
    }


@admin.post("/labelers", status_code=201)
def post_labeler(body: LabelerIn, db: DBDep):
    password_hash = hash_password(body.password)  # ~0.5 s, before the write transaction begins
    user = service.create_labeler(db, body.username, password_hash)
    return _commit(db, {"id": user.id, "username": user.username})


@admin.patch("/labelers/{user_id}")
def patch_labeler(user_id: int, body: LabelerUpdateIn, db: DBDep):
    """Deactivate (active: false; its sessions end, it cannot log in), reactivate, or set a new password (its
    sessions end)."""
    password_hash = hash_password(body.password) if body.password is not None else None  # before the transaction
    user = service.get_labeler(db, user_id)
    ended = 0
    if body.active is not None:
        user.active = body.active
    if password_hash is not None:
        user.password_hash = password_hash
    if body.active is False or password_hash is not None:
        ended = service.end_sessions(db, user_id=user.id)
    return _commit(db, {"id": user.id, "username": user.username, "active": user.active, "sessions_ended": ended})


@admin.post("/labelers/{user_id}/logout")
def post_labeler_logout(user_id: int, db: DBDep):
    """End every session of one labeler (it logs in again)."""
    user = service.get_labeler(db, user_id)
    return _commit(db, {"id": user.id, "sessions_ended": service.end_sessions(db, user_id=user.id)})


@admin.post("/projects/{project_id}/tasks", status_code=201)
def post_tasks(project_id: int, body: TasksIn, db: DBDep):
    project = service.get_project(db, project_id)
    return _commit(db, service.create_tasks(db, project, body.kind, body.overlap, body.labelers))


@admin.get("/projects/{project_id}/progress")
def get_progress(project_id: int, db: DBDep):
    return export.progress(db, service.get_project(db, project_id))


@admin.get("/projects/{project_id}/agreement")
def get_agreement(project_id: int, db: DBDep):
    return export.agreement(db, service.get_project(db, project_id))


@admin.post("/projects/{project_id}/lock")
def post_lock(project_id: int, body: LockIn, db: DBDep):
    project = service.get_project(db, project_id)
    service.set_locked(db, project, body.locked)
    return _commit(db, {"id": project.id, "locked": body.locked})


@admin.get("/projects/{project_id}/export/{kind}.jsonl")
def get_export(project_id: int, kind: Literal[export.EXPORT_KINDS], db: DBDep):
    project = service.get_project(db, project_id)
    records = export.export_records(db, project)[kind]
    body = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return Response(
        body, media_type="application/x-ndjson", headers={"Content-Disposition": f'attachment; filename="{kind}.jsonl"'}
    )


# ----- admin: the lead's pages (review.py): instructions, labelers' progress, assignment, browsing, adjudication -----


class ProjectUpdateIn(Strict):
    instructions: Instructions | None = None
    kind_instructions: Annotated[dict[str, Instructions], Field(max_length=10)] | None = None


class AssignIn(Strict):
    labelers: Annotated[list[Name], Field(min_length=1, max_length=1000)]
    task_ids: Annotated[list[int], Field(min_length=1, max_length=review.MAX_BATCH)]


class AdjudicationIn(Strict):
    label_id: int | None = None  # accept this labeler's answer
    ranking: Annotated[list[StrictInt | list[StrictInt]] | None, Field(max_length=MAX_RESPONSES)] = None
    demonstration: Annotated[str | None, Field(max_length=MAX_TEXT)] = None
    good: StrictBool | None = None  # a binary task's final verdict: thumbs up (true) or down (false)
    note: Annotated[str, Field(max_length=2000)] = ""


Page = Annotated[int, Query(ge=1)]
PerPage = Annotated[int, Query(ge=1, le=review.MAX_PER_PAGE)]


@admin.get("/projects/{project_id}")
def get_project(project_id: int, db: DBDep):
    return review.project_view(service.get_project(db, project_id))


@admin.patch("/projects/{project_id}")
def patch_project(project_id: int, body: ProjectUpdateIn, db: DBDep):
    """Change the shared and the per-kind instructions (a kind left out of `kind_instructions` has none)."""
    project = service.get_project(db, project_id)
    review.set_instructions(project, body.instructions, body.kind_instructions)
    return _commit(db, review.project_view(project))


@admin.get("/projects/{project_id}/labelers")
def get_project_labelers(project_id: int, db: DBDep):
    return {"labelers": review.labeler_progress(db, service.get_project(db, project_id))}


@admin.post("/projects/{project_id}/assignments", status_code=201)
def post_assignments(project_id: int, body: AssignIn, db: DBDep):
    """Assign each chosen labeler to each task of a batch (task ids of this project)."""
    project = service.get_project(db, project_id)
    return _commit(db, review.assign(db, project, body.labelers, body.task_ids))


@admin.get("/projects/{project_id}/prompts")
def get_prompts(project_id: int, db: DBDep, page: Page = 1, per_page: PerPage = 20):
    return review.browse(db, service.get_project(db, project_id), page, per_page)


@admin.get("/projects/{project_id}/disagreements")
def get_disagreements(
    project_id: int,
    db: DBDep,
    page: Page = 1,
    per_page: PerPage = 20,
    status: Literal["open", "decided", "all"] = "all",
):
    return review.disagreements(db, service.get_project(db, project_id), page, per_page, status)


@admin.put("/tasks/{task_id}/adjudication")
def put_adjudication(task_id: int, body: AdjudicationIn, db: DBDep):
    """The final answer to a task: accept one labeler's label (`label_id`) or write the ranking / demonstration /
    binary verdict (`good`)."""
    task = review.get_task(db, task_id)
    adjudication = review.adjudicate(
        db,
        task,
        label_id=body.label_id,
        ranking=body.ranking,
        demonstration=body.demonstration,
        good=body.good,
        note=body.note,
    )
    return _commit(db, {"task_id": task.id, **review.adjudication_view(adjudication)})


@admin.delete("/tasks/{task_id}/adjudication")
def delete_adjudication(task_id: int, db: DBDep):
    task = review.get_task(db, task_id)
    return _commit(db, {"task_id": task.id, "withdrawn": review.withdraw(db, task)})
