"""What the labeling app does, independent of HTTP: each function runs inside the caller's transaction and raises
`AppError` before writing anything when the input is wrong, so a refused request leaves the database as it was."""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DB

from prefer.data.formats import MAX_RESPONSES, MIN_RESPONSES, parse_ranking, read_prompts, read_records
from prefer.errors import PreferError
from prefer.labeling.app.models import (
    MAX_NAME,
    MAX_TEXT,
    Assignment,
    Generation,
    Label,
    Project,
    Prompt,
    Response,
    Task,
    User,
    now,
)
from prefer.labeling.app.security import hash_password

FLAGS = ("fails_instruction", "harmful", "personal_data", "made_up_facts")  # InstructGPT's labeler metadata
KINDS = ("ranking", "demonstration")


class AppError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def get_project(db: DB, project_id: int) -> Project:
    project = db.get(Project, project_id)
    if project is None:
        raise AppError(404, f"project_id {project_id}: no such project")
    return project


def create_project(db: DB, name: str, instructions: str = "") -> Project:
    if db.scalar(select(Project).where(Project.name == name)) is not None:
        raise AppError(409, f"name: a project named {name!r} exists")
    project = Project(name=name, instructions=instructions)
    db.add(project)
    db.flush()
    return project


def _jsonl_records(content: bytes, filename: str, reader):
    """Run one of prefer's JSONL readers on uploaded bytes, so uploads get the same checks and `file:line` errors
    as files given to `prefer reward` / `prefer sft`."""
    name = Path(filename).name or "upload.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            return reader(path)
        except PreferError as error:
            raise AppError(422, str(error).replace(str(path), name)) from None


def _check_text(where: str, text: str) -> None:
    if len(text) > MAX_TEXT:
        raise AppError(422, f"{where}: {len(text)} characters; at most {MAX_TEXT}")


def load_prompts(db: DB, project: Project, content: bytes, filename: str) -> dict:
    texts = [p.prompt for p in _jsonl_records(content, filename, read_prompts)]
    for number, text in enumerate(texts, 1):
        _check_text(f"{filename}: record {number}: field 'prompt'", text)
    existing = set(db.scalars(select(Prompt.text).where(Prompt.project_id == project.id)))
    added = 0
    for text in dict.fromkeys(texts):  # a prompt listed twice is one prompt
        if text not in existing:
            db.add(Prompt(project_id=project.id, text=text))
            added += 1
    db.flush()
    return {"prompts_read": len(texts), "prompts_added": added}


def _prompt_by_text(db: DB, project: Project) -> dict[str, Prompt]:
    return {p.text: p for p in db.scalars(select(Prompt).where(Prompt.project_id == project.id))}


def attach_responses(
    db: DB,
    project: Project,
    by_prompt: dict[str, list[str]],
    *,
    where: dict[str, str],
    generation: Generation | None = None,
) -> dict:
    """Replace the responses of the given prompts (a prompt not in the project is added). Refused once a
    ranking task exists for the prompt: its labels refer to response positions."""
    prompts = _prompt_by_text(db, project)
    ranked = set(db.scalars(select(Task.prompt_id).where(Task.project_id == project.id, Task.kind == "ranking")))
    for text, responses in by_prompt.items():
        if not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
            raise AppError(
                422,
                f"{where[text]}: field 'responses': {len(responses)} responses; a ranking needs "
                f"{MIN_RESPONSES} to {MAX_RESPONSES}",
            )
        for i, response in enumerate(responses):
            if not isinstance(response, str) or not response.strip():
                raise AppError(422, f"{where[text]}: field 'responses': response {i} is empty or not a string")
            _check_text(f"{where[text]}: field 'responses': response {i}", response)
        if text in prompts and prompts[text].id in ranked:
            raise AppError(
                409, f"{where[text]}: field 'prompt': it already has a ranking task; its responses are fixed"
            )
    new = [Prompt(project_id=project.id, text=text) for text in by_prompt if text not in prompts]
    db.add_all(new)
    db.flush()  # one round of inserts for all new prompts, then their ids
    prompts.update({p.text: p for p in new})
    new_texts = {p.text for p in new}
    replaced = [prompts[text].id for text in by_prompt if text not in new_texts]
    if replaced:
        for old in db.scalars(select(Response).where(Response.prompt_id.in_(replaced))):
            db.delete(old)
        db.flush()
    db.add_all(
        Response(
            prompt_id=prompts[text].id,
            position=position,
            text=response,
            generation_id=generation.id if generation else None,
        )
        for text, responses in by_prompt.items()
        for position, response in enumerate(responses)
    )
    db.flush()
    return {"prompts_with_responses": len(by_prompt), "responses_added": sum(map(len, by_prompt.values()))}


def upload_responses(db: DB, project: Project, content: bytes, filename: str) -> dict:
    records = _jsonl_records(
        content, filename, lambda path: list(read_records(path, {"prompt": str, "responses": list}))
    )
    by_prompt, where = {}, {}
    for location, record in records:
        location = location.replace(str(Path(location).parent) + "/", "")
        if not record["prompt"].strip():
            raise AppError(422, f"{location}: field 'prompt' is empty")
        _check_text(f"{location}: field 'prompt'", record["prompt"])
        by_prompt[record["prompt"]], where[record["prompt"]] = record["responses"], location
    return attach_responses(db, project, by_prompt, where=where)


def record_generation(
    db: DB, project: Project, checkpoint: str, settings: dict, by_prompt: dict[str, list[str]]
) -> dict:
    generation = Generation(project_id=project.id, checkpoint=checkpoint, settings=settings)
    db.add(generation)
    db.flush()
    result = attach_responses(
        db, project, by_prompt, where={t: f"generated for prompt {t[:40]!r}" for t in by_prompt}, generation=generation
    )
    return {"generation_id": generation.id, **result}


def create_labeler(db: DB, username: str, password: str) -> User:
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise AppError(409, f"username: {username!r} exists")
    user = User(username=username, password_hash=hash_password(password))
    db.add(user)
    db.flush()
    return user


def create_tasks(db: DB, project: Project, kind: str, overlap: int, usernames: list[str] | None) -> dict:
    """One task per prompt (ranking: prompts with responses), each assigned to `overlap` labelers, the least
    loaded in this project first, so every labeler gets about the same number of tasks."""
    if kind not in KINDS:
        raise AppError(422, f"kind: must be one of {list(KINDS)}, got {kind!r}")
    query = select(User).where(User.active.is_(True)).order_by(User.id)
    if usernames:
        query = query.where(User.username.in_(usernames))
    labelers = list(db.scalars(query))
    missing = sorted(set(usernames or []) - {u.username for u in labelers})
    if missing:
        raise AppError(422, f"labelers: no active labeler(s) {missing}")
    if not 1 <= overlap <= len(labelers):
        raise AppError(422, f"overlap: {overlap} labelers per task, but {len(labelers)} labeler(s) are available")
    prompts = list(db.scalars(select(Prompt).where(Prompt.project_id == project.id).order_by(Prompt.id)))
    if kind == "ranking":
        counts = dict(
            db.execute(
                select(Response.prompt_id, func.count())
                .join(Prompt)
                .where(Prompt.project_id == project.id)
                .group_by(Response.prompt_id)
            ).all()
        )
        prompts = [p for p in prompts if counts.get(p.id, 0) >= MIN_RESPONSES]
    existing = set(db.scalars(select(Task.prompt_id).where(Task.project_id == project.id, Task.kind == kind)))
    load = Counter({u.id: 0 for u in labelers})
    load.update(
        db.scalars(
            select(Assignment.user_id)
            .join(Task)
            .where(Task.project_id == project.id, Assignment.user_id.in_(list(load)))
        )
    )
    tasks = [Task(project_id=project.id, prompt_id=p.id, kind=kind) for p in prompts if p.id not in existing]
    db.add_all(tasks)
    db.flush()
    assignments = []
    for task in tasks:
        for user_id in sorted(load, key=lambda u: (load[u], u))[:overlap]:
            assignments.append(Assignment(task_id=task.id, user_id=user_id))
            load[user_id] += 1
    db.add_all(assignments)
    db.flush()
    return {"tasks_created": len(tasks), "assignments_created": len(assignments)}


def own_assignment(db: DB, user: User, assignment_id: int, *, for_update: bool = False) -> Assignment:
    """The labeler's own assignment; another labeler's id reads exactly like an unknown one."""
    query = select(Assignment).where(Assignment.id == assignment_id, Assignment.user_id == user.id)
    assignment = db.scalar(query.with_for_update() if for_update else query)
    if assignment is None:
        raise AppError(404, f"assignment_id {assignment_id}: no such assignment of yours")
    return assignment


def latest_label(db: DB, assignment: Assignment) -> Label | None:
    return db.scalar(select(Label).where(Label.assignment_id == assignment.id).order_by(Label.version.desc()))


def display_order(assignment_id: int, k: int) -> list[int]:
    """Responses are shown in an order fixed per assignment and different between labelers (no position bias)."""
    order = list(range(k))
    random.Random(assignment_id).shuffle(order)
    return order


def assignment_view(db: DB, assignment: Assignment) -> dict:
    task = assignment.task
    project = db.get(Project, task.project_id)
    responses = task.prompt.responses if task.kind == "ranking" else []
    label = latest_label(db, assignment)
    return {
        "assignment_id": assignment.id,
        "kind": task.kind,
        "status": assignment.status,
        "project": project.name,
        "instructions": project.instructions,
        "locked": project.locked_at is not None,
        "prompt": task.prompt.text,
        "responses": [{"index": i, "text": responses[i].text} for i in display_order(assignment.id, len(responses))],
        "draft": assignment.draft,
        "label": label_view(label) if label else None,
    }


def label_view(label: Label) -> dict:
    return {
        "label_id": label.id,
        "version": label.version,
        "ranking": label.ranking,
        "demonstration": label.demonstration,
        "quality": label.quality,
        "flags": label.flags,
    }


def queue(db: DB, user: User) -> list[dict]:
    order = {"draft": 0, "pending": 1, "skipped": 2, "submitted": 3}
    rows = db.execute(
        select(Assignment, Task, Prompt)
        .join(Task, Assignment.task_id == Task.id)
        .join(Prompt, Task.prompt_id == Prompt.id)
        .where(Assignment.user_id == user.id)
    ).all()
    items = [{"assignment_id": a.id, "kind": t.kind, "status": a.status, "prompt": p.text[:200]} for a, t, p in rows]
    return sorted(items, key=lambda item: (order[item["status"]], item["assignment_id"]))


def _writable(db: DB, assignment: Assignment) -> None:
    if db.get(Project, assignment.task.project_id).locked_at is not None:
        raise AppError(409, f"assignment_id {assignment.id}: the project is locked; answers can no longer change")


def save_draft(db: DB, assignment: Assignment, draft: dict) -> None:
    _writable(db, assignment)
    assignment.draft = draft
    if assignment.status in ("pending", "skipped"):
        assignment.status = "draft"
    assignment.updated_at = now()


def skip(db: DB, assignment: Assignment) -> None:
    _writable(db, assignment)
    if assignment.status == "submitted":
        raise AppError(409, f"assignment_id {assignment.id}: already submitted; edit it instead of skipping")
    assignment.status = "skipped"
    assignment.updated_at = now()


def validate_answer(assignment: Assignment, answer: dict) -> dict:
    """The stored form of a submission, or AppError naming the field."""
    task = assignment.task
    quality, flags = answer.get("quality"), answer.get("flags") or []
    if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 7):
        raise AppError(422, f"quality: must be an integer from 1 to 7, got {quality!r}")
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise AppError(422, f"flags: unknown flag(s) {unknown}; known: {list(FLAGS)}")
    if task.kind == "ranking":
        if answer.get("demonstration") is not None:
            raise AppError(422, "demonstration: a ranking task takes a 'ranking', not a demonstration")
        k = len(task.prompt.responses)
        try:
            ranks = parse_ranking("ranking", answer.get("ranking"), k)
        except PreferError as error:
            raise AppError(422, str(error)) from None
        if len(set(ranks)) == 1:
            raise AppError(422, "ranking: every response ties; order at least two of them, or skip the task")
        return {"ranking": answer["ranking"], "demonstration": None, "quality": quality, "flags": sorted(set(flags))}
    text = answer.get("demonstration")
    if answer.get("ranking") is not None:
        raise AppError(422, "ranking: a demonstration task takes a 'demonstration', not a ranking")
    if not isinstance(text, str) or not text.strip():
        raise AppError(422, "demonstration: the ideal response is required and must not be empty")
    return {"ranking": None, "demonstration": text, "quality": quality, "flags": sorted(set(flags))}


def submit(db: DB, user: User, assignment_id: int, answer: dict, idempotency_key: str | None) -> tuple[Label, bool]:
    """(label, replayed). A key already used by this labeler returns its label and writes nothing; the
    assignment row is locked first (FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent edits of one
    assignment get consecutive versions."""
    if idempotency_key is not None:
        previous = db.scalar(select(Label).where(Label.user_id == user.id, Label.idempotency_key == idempotency_key))
        if previous is not None:
            if previous.assignment_id != assignment_id:
                raise AppError(409, "Idempotency-Key: already used for another assignment")
            return previous, True
    assignment = own_assignment(db, user, assignment_id, for_update=True)
    _writable(db, assignment)
    stored = validate_answer(assignment, answer)
    version = (db.scalar(select(func.max(Label.version)).where(Label.assignment_id == assignment.id)) or 0) + 1
    label = Label(
        assignment_id=assignment.id, user_id=user.id, version=version, idempotency_key=idempotency_key, **stored
    )
    db.add(label)
    assignment.status, assignment.draft, assignment.updated_at = "submitted", None, now()
    db.flush()
    return label, False


def is_duplicate_key(error: IntegrityError) -> bool:
    return "uq_labels_user_key" in str(error.orig) or "idempotency_key" in str(error.orig)


def set_locked(db: DB, project: Project, locked: bool) -> None:
    project.locked_at = now() if locked else None


def check_name(field: str, value: str) -> str:
    if not value.strip() or len(value) > MAX_NAME:
        raise AppError(422, f"{field}: must be 1 to {MAX_NAME} characters")
    return value
