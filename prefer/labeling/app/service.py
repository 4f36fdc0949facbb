"""What the labeling app does, independent of HTTP: each function runs inside the caller's transaction and raises
`AppError` before writing anything when the input is wrong, so a refused request leaves the database as it was."""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import TypeVar

from sqlalchemy import delete, func, select
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
    Session,
    Task,
    User,
    now,
)

FLAGS = ("fails_instruction", "harmful", "personal_data", "made_up_facts")  # InstructGPT's labeler metadata
KINDS = ("ranking", "demonstration", "binary")
RESPONSE_KINDS = ("ranking", "binary")  # tasks whose labels refer to the prompt's responses, which then stay fixed
Row = TypeVar("Row")  # a mapped class of models.py


class AppError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def get_row(db: DB, model: type[Row], row_id: int, id_field: str, what: str) -> Row:
    """The row of `model` with this id, or a 404 naming the id field (`project_id 3: no such project`)."""
    row = db.get(model, row_id)
    if row is None:
        raise AppError(404, f"{id_field} {row_id}: no such {what}")
    return row


def add_unique(db: DB, row: Row, column, value, taken: str) -> Row:
    """Insert `row` (flushed: it has its id) unless its table already holds `value` in `column` (409 `taken`)."""
    if db.scalar(select(type(row)).where(column == value)) is not None:
        raise AppError(409, taken)
    db.add(row)
    db.flush()
    return row


def row_view(row, id_key: str, fields: tuple[str, ...]) -> dict:
    """A row as the API shows it: its id under `id_key`, then `fields` by name, in that order."""
    return {id_key: row.id, **{name: getattr(row, name) for name in fields}}


def get_project(db: DB, project_id: int) -> Project:
    return get_row(db, Project, project_id, "project_id", "project")


def create_project(db: DB, name: str, instructions: str = "") -> Project:
    project = Project(name=name, instructions=instructions)
    return add_unique(db, project, Project.name, name, f"name: a project named {name!r} exists")


NUL = "\x00"
MAX_FILENAME = 200


def check_no_nul(where: str, text: str) -> None:
    if NUL in text:
        raise AppError(422, f"{where}: contains a NUL character (\\u0000), which no text may hold")


def check_filename(filename: str) -> str:
    """The name an upload's error messages call it by (`?filename=`); never used as a path."""
    if not 1 <= len(filename) <= MAX_FILENAME:
        raise AppError(422, f"filename: {len(filename)} characters; 1 to {MAX_FILENAME}")
    if any(ord(c) < 32 or ord(c) == 127 for c in filename) or "/" in filename or "\\" in filename:
        raise AppError(422, "filename: a file name without control characters or path separators")
    if filename in (".", ".."):
        raise AppError(422, f"filename: {filename!r} is not a file name")
    return filename


def _nesting_line(content: bytes) -> int:
    """The first line whose JSON is nested beyond what the parser can follow."""
    for number, line in enumerate(content.splitlines(), 1):
        try:
            json.loads(line)
        except RecursionError:
            return number
        except ValueError:
            continue
    return 0


def _jsonl_records(content: bytes, filename: str, reader):
    """Run one of prefer's JSONL readers on uploaded bytes, so uploads get the same checks and `file:line` errors
    as files given to `prefer reward` / `prefer sft`. The bytes go to a fixed name in a fresh directory; the
    reader's messages then name the upload by `filename`."""
    name = check_filename(filename)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"
        path.write_bytes(content)
        try:
            return reader(path, name)
        except PreferError as error:
            raise AppError(422, str(error).replace(str(path), name)) from None
        except RecursionError:
            raise AppError(422, f"{name}:{_nesting_line(content)}: JSON nested too deeply") from None


def _check_text(where: str, text: str) -> None:
    check_no_nul(where, text)
    if len(text) > MAX_TEXT:
        raise AppError(422, f"{where}: {len(text)} characters; at most {MAX_TEXT}")


def load_prompts(db: DB, project: Project, content: bytes, filename: str) -> dict:
    texts = [p.prompt for p in _jsonl_records(content, filename, lambda path, _name: read_prompts(path))]
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
    rendered: dict[str, str] | None = None,
) -> dict:
    """Replace the responses of the given prompts (a prompt not in the project is added). Refused once a
    ranking or binary task exists for the prompt: its labels refer to the responses. `rendered`: prompt -> the
    chat-template rendering the responses were sampled from (`Prompt.rendered`); a prompt not in it has none."""
    prompts = _prompt_by_text(db, project)
    ranked = set(db.scalars(select(Task.prompt_id).where(Task.project_id == project.id, Task.kind.in_(RESPONSE_KINDS))))
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
                409, f"{where[text]}: field 'prompt': it already has a ranking or binary task; its responses are fixed"
            )
    new = [Prompt(project_id=project.id, text=text) for text in by_prompt if text not in prompts]
    db.add_all(new)
    db.flush()  # one round of inserts for all new prompts, then their ids
    prompts.update({p.text: p for p in new})
    new_texts = {p.text for p in new}
    for text in by_prompt:  # the rendering belongs to these responses: new ones bring their own, or none
        prompts[text].rendered = (rendered or {}).get(text)
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
        content,
        filename,
        lambda path, name: [
            (where.replace(str(path), name), record)
            for where, record in read_records(path, {"prompt": str, "responses": list})
        ],
    )
    by_prompt, where = {}, {}
    for location, record in records:
        if not record["prompt"].strip():
            raise AppError(422, f"{location}: field 'prompt' is empty")
        _check_text(f"{location}: field 'prompt'", record["prompt"])
        by_prompt[record["prompt"]], where[record["prompt"]] = record["responses"], location
    return attach_responses(db, project, by_prompt, where=where)


def create_labeler(db: DB, username: str, password_hash: str) -> User:
    """`password_hash`: from security.hash_password, computed before the caller's write transaction began."""
    user = User(username=username, password_hash=password_hash)
    return add_unique(db, user, User.username, username, f"username: {username!r} exists")


def get_labeler(db: DB, user_id: int) -> User:
    return get_row(db, User, user_id, "user_id", "labeler")


def end_sessions(db: DB, *, user_id: int | None, keep: int | None = None) -> int:
    """Delete a labeler's sessions (user_id None: every admin session), all but `keep`; -> how many ended."""
    who = Session.user_id == user_id if user_id is not None else Session.is_admin.is_(True)
    query = delete(Session).where(who)
    if keep is not None:
        query = query.where(Session.id != keep)
    return db.execute(query).rowcount


def prune_sessions(db: DB, older_than) -> None:
    """Sessions past their absolute lifetime are dead anyway; a login clears them away."""
    db.execute(delete(Session).where(Session.created_at < older_than))


def _new_tasks(db: DB, project: Project, kind: str, prompt_ids: list[int] | None) -> list[Task]:
    """The tasks of `kind` the project's prompts (or those of `prompt_ids`) still lack: one per prompt (ranking:
    prompts with at least two responses), binary: one per response."""
    query = select(Prompt).where(Prompt.project_id == project.id).order_by(Prompt.id)
    if prompt_ids is not None:
        query = query.where(Prompt.id.in_(prompt_ids))
    prompts = list(db.scalars(query))
    if kind == "binary":
        done = set(db.scalars(select(Task.response_id).where(Task.project_id == project.id, Task.kind == kind)))
        responses = db.scalars(
            select(Response).where(Response.prompt_id.in_([p.id for p in prompts])).order_by(Response.id)
        )
        return [
            Task(project_id=project.id, prompt_id=r.prompt_id, kind=kind, response_id=r.id)
            for r in responses
            if r.id not in done
        ]
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
    return [Task(project_id=project.id, prompt_id=p.id, kind=kind) for p in prompts if p.id not in existing]


def create_tasks(
    db: DB,
    project: Project,
    kind: str,
    overlap: int,
    usernames: list[str] | None,
    *,
    prompt_ids: list[int] | None = None,
) -> dict:
    """One task per prompt (ranking: prompts with responses; binary: one per response), for every prompt of the
    project or those of `prompt_ids`, each assigned to `overlap` labelers, the least loaded in this project first,
    so every labeler gets about the same number of tasks."""
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
    load = Counter({u.id: 0 for u in labelers})
    load.update(
        db.scalars(
            select(Assignment.user_id)
            .join(Task)
            .where(Task.project_id == project.id, Assignment.user_id.in_(list(load)))
        )
    )
    tasks = _new_tasks(db, project, kind, prompt_ids)
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


def instructions_for(project: Project, kind: str) -> str:
    """What a labeler of a `kind` task reads: the project's shared instructions, then those of the kind."""
    parts = [project.instructions or "", (project.kind_instructions or {}).get(kind, "")]
    return "\n\n".join(part for part in parts if part.strip())


def assignment_view(db: DB, assignment: Assignment) -> dict:
    task = assignment.task
    project = db.get(Project, task.project_id)
    responses = task.prompt.responses if task.kind == "ranking" else []
    shown = [{"index": i, "text": responses[i].text} for i in display_order(assignment.id, len(responses))]
    if task.kind == "binary":  # the one response to judge, under its position among the prompt's responses
        shown = [{"index": task.response.position, "text": task.response.text}]
    label = latest_label(db, assignment)
    return {
        "assignment_id": assignment.id,
        "kind": task.kind,
        "status": assignment.status,
        "project": project.name,
        "instructions": instructions_for(project, task.kind),
        "locked": project.locked_at is not None,
        "prompt": task.prompt.text,
        "responses": shown,
        "draft": assignment.draft,
        "label": label_view(label) if label else None,
    }


def label_view(label: Label) -> dict:
    return row_view(label, "label_id", ("version", "ranking", "demonstration", "good", "quality", "flags"))


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


ANSWER_FIELDS = {"ranking": "ranking", "demonstration": "demonstration", "binary": "good"}


def _check_answer_fields(kind: str, answer: dict) -> None:
    """An answer (or draft) holds the field of its task's kind only: a 422 names the first other one given."""
    own = ANSWER_FIELDS[kind]
    for field in ANSWER_FIELDS.values():
        if field != own and answer.get(field) is not None:
            raise AppError(422, f"{field}: a {kind} task takes '{own}', not '{field}'")


def validate_draft(assignment: Assignment, draft: dict) -> dict:
    """A draft may be unfinished (a ranking may leave responses out) but never wrong: indices in range, none
    twice, the field of the task's kind."""
    task = assignment.task
    if task.kind == "binary" or draft.get("good") is not None:
        _check_answer_fields(task.kind, draft)
    if task.kind == "ranking":
        if draft.get("demonstration") is not None:
            raise AppError(422, "demonstration: a ranking task takes a 'ranking', not a demonstration")
        k, seen = len(task.prompt.responses), set()
        for entry in draft.get("ranking") or []:
            group = entry if isinstance(entry, list) else [entry]
            if not group:
                raise AppError(422, "ranking: an empty group of tied responses")
            for index in group:
                if not 0 <= index < k:
                    raise AppError(422, f"ranking: 'ranking' index {index} is out of range for {k} responses")
                if index in seen:
                    raise AppError(422, f"ranking: 'ranking' lists response {index} twice")
                seen.add(index)
    elif draft.get("ranking") is not None:
        raise AppError(422, "ranking: a demonstration task takes a 'demonstration', not a ranking")
    return draft


def save_draft(db: DB, assignment: Assignment, draft: dict) -> None:
    _writable(db, assignment)
    draft = validate_draft(assignment, draft)
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
    if task.kind == "binary" or answer.get("good") is not None:
        _check_answer_fields(task.kind, answer)
    if task.kind == "binary":
        if not isinstance(answer.get("good"), bool):
            raise AppError(422, "good: a binary task needs 'good': true (thumbs up) or false (thumbs down)")
        return {"good": answer["good"], "quality": quality, "flags": sorted(set(flags))}
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
            if _stored_form(answer) != _stored_form(label_view(previous)):
                raise AppError(409, "Idempotency-Key: already used for a different answer; send a new key")
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


def _stored_form(answer: dict) -> tuple:
    """What a label keeps of an answer, to tell a replay (the same answer) from a reused key."""
    return (
        answer.get("ranking"),
        answer.get("demonstration"),
        answer.get("good"),
        answer.get("quality"),
        sorted(set(answer.get("flags") or [])),
    )


def is_duplicate_key(error: IntegrityError) -> bool:
    return "uq_labels_user_key" in str(error.orig) or "idempotency_key" in str(error.orig)


def set_locked(db: DB, project: Project, locked: bool) -> None:
    project.locked_at = now() if locked else None


def check_name(field: str, value: str) -> str:
    if not value.strip() or len(value) > MAX_NAME:
        raise AppError(422, f"{field}: must be 1 to {MAX_NAME} characters")
    return value
