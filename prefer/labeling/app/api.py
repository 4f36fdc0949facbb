"""The JSON API: login, the labeler's queue and answers, and the admin's projects, data, labelers, tasks,
progress, agreement, lock and export. Every request is one transaction: it commits whole or not at all."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DB

from prefer.data.formats import MAX_RESPONSES, MIN_RESPONSES
from prefer.errors import PreferError
from prefer.labeling.app import export, service
from prefer.labeling.app.deps import DBDep, Labeler, require_admin
from prefer.labeling.app.models import MAX_NAME, MAX_TEXT, Prompt, Session, User
from prefer.labeling.app.security import COOKIE, new_token, same_secret, token_digest, verify_password
from prefer.labeling.app.service import AppError

router = APIRouter(prefix="/api")
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Strict):
    username: Name
    password: Annotated[str, Field(min_length=1, max_length=1000)]


class AdminLoginIn(Strict):
    token: Annotated[str, Field(min_length=1, max_length=1000)]


class AnswerIn(Strict):
    ranking: Annotated[list[StrictInt | list[StrictInt]] | None, Field(max_length=MAX_RESPONSES)] = None
    demonstration: Annotated[str | None, Field(max_length=MAX_TEXT)] = None
    quality: Annotated[StrictInt | None, Field(ge=1, le=7)] = None
    flags: Annotated[list[Literal[service.FLAGS]] | None, Field(max_length=len(service.FLAGS))] = None


class ProjectIn(Strict):
    name: Name
    instructions: Annotated[str, Field(max_length=MAX_TEXT)] = ""


class LabelerIn(Strict):
    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=1000)]


class TasksIn(Strict):
    kind: Literal["ranking", "demonstration"]
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


def _commit(db: DB, result):
    db.commit()
    return result


def _start_session(db: DB, response: Response, *, user: User | None, is_admin: bool) -> dict:
    token, csrf = new_token(), new_token()
    db.add(
        Session(token_hash=token_digest(token), user_id=user.id if user else None, is_admin=is_admin, csrf_token=csrf)
    )
    db.commit()
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
    return {"csrf_token": csrf, "username": user.username if user else None, "admin": is_admin}


# Login needs a JSON body, which a cross-site form cannot send without a CORS preflight (login CSRF).
@router.post("/login")
def login(body: LoginIn, response: Response, db: DBDep):
    user = db.scalar(select(User).where(User.username == body.username))
    if not verify_password(user.password_hash if user else None, body.password) or not user.active:
        raise HTTPException(401, "username or password: wrong")
    return _start_session(db, response, user=user, is_admin=False)


@router.post("/admin/login")
def admin_login(body: AdminLoginIn, request: Request, response: Response, db: DBDep):
    if not same_secret(body.token, request.app.state.admin_token):
        raise HTTPException(401, "token: wrong admin token")
    return _start_session(db, response, user=None, is_admin=True)


@router.post("/logout")
def logout(request: Request, response: Response, db: DBDep):
    from prefer.labeling.app.deps import identify

    identity = identify(request, db)  # checks the CSRF token
    if identity is not None and identity.session is not None:
        db.delete(identity.session)
        db.commit()
    response.delete_cookie(COOKIE, path="/")
    return {"logged_out": True}


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


@admin.post("/projects/{project_id}/generate")
def post_generate(project_id: int, body: GenerateIn, db: DBDep):
    """K samples per prompt (prompts without a ranking task) from a checkpoint; the settings are recorded."""
    from prefer.labeling.app.models import Task

    project = service.get_project(db, project_id)
    ranked = set(db.scalars(select(Task.prompt_id).where(Task.project_id == project.id, Task.kind == "ranking")))
    prompts = [
        p.text
        for p in db.scalars(select(Prompt).where(Prompt.project_id == project.id).order_by(Prompt.id))
        if p.id not in ranked
    ]
    if not prompts:
        raise AppError(422, f"project_id {project_id}: no prompt without a ranking task to generate for")
    from prefer.labeling.responses import generate_from_checkpoint  # torch loads here, not at start-up

    settings = body.model_dump(exclude={"checkpoint", "device"})
    try:
        samples = generate_from_checkpoint(
            body.checkpoint,
            prompts,
            k=body.num_responses,
            max_new_tokens=body.max_new_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            block=body.block,
            seed=body.seed,
            device=body.device,
        )
    except PreferError as error:
        message = str(error)
        raise AppError(422, message if message.startswith("checkpoint") else f"checkpoint: {message}") from None
    by_prompt, dropped = {}, 0
    for prompt, responses in zip(prompts, samples):
        kept = [r for r in responses if r.strip()]  # an empty sample is nothing to rank
        if len(kept) >= MIN_RESPONSES:
            by_prompt[prompt] = kept
        else:
            dropped += 1
    result = service.record_generation(db, project, body.checkpoint, settings, by_prompt)
    return _commit(db, {**result, "prompts_dropped_fewer_than_two_nonempty": dropped})


@admin.get("/labelers")
def list_labelers(db: DBDep):
    return {
        "labelers": [
            {"id": u.id, "username": u.username, "active": u.active} for u in db.scalars(select(User).order_by(User.id))
        ]
    }


@admin.post("/labelers", status_code=201)
def post_labeler(body: LabelerIn, db: DBDep):
    user = service.create_labeler(db, body.username, body.password)
    return _commit(db, {"id": user.id, "username": user.username})


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
def get_export(project_id: int, kind: Literal["rankings", "demonstrations", "pairs"], db: DBDep):
    project = service.get_project(db, project_id)
    records = export.export_records(db, project)[kind]
    body = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return Response(
        body, media_type="application/x-ndjson", headers={"Content-Disposition": f'attachment; filename="{kind}.jsonl"'}
    )
