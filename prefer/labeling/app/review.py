"""What a project lead sees and decides: each labeler's progress, assigning chosen labelers to a batch of tasks,
browsing prompts with their responses and every labeler's answers, and reviewing the tasks the labelers disagree
on, where the lead accepts one labeler's answer or writes the final one (a ranking, a demonstration or a binary
verdict: an `Adjudication`; the export uses it instead of the labelers' answers to that task).

Like service.py, each function runs inside the caller's transaction and raises `AppError` before writing anything
when the input is wrong."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DB

from prefer.data.formats import parse_ranking
from prefer.errors import PreferError
from prefer.labeling.app.agreement import pooled_agreement, pooled_binary_agreement
from prefer.labeling.app.models import (
    MAX_TEXT,
    Adjudication,
    Assignment,
    Label,
    Project,
    Prompt,
    Response,
    Task,
    User,
    aware,
    now,
)
from prefer.labeling.app.service import KINDS, AppError, get_row

MAX_PER_PAGE = 100
MAX_BATCH = 5000  # tasks in one assignment request
ADMIN_NAME = "admin"  # who a written adjudication is exported as (one shared admin token, no named admins)


def _when(moment) -> str | None:
    moment = aware(moment)
    return moment.isoformat() if moment is not None else None


def _page(page: int, per_page: int) -> tuple[int, int]:
    if page < 1:
        raise AppError(422, f"page: {page}; pages count from 1")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise AppError(422, f"per_page: {per_page}; 1 to {MAX_PER_PAGE}")
    return page, per_page


# ----- instructions -----


def set_instructions(project: Project, instructions: str | None, kind_instructions: dict[str, str] | None) -> None:
    if kind_instructions is not None:
        unknown = sorted(set(kind_instructions) - set(KINDS))
        if unknown:
            raise AppError(422, f"kind_instructions: unknown task kind(s) {unknown}; known: {list(KINDS)}")
        project.kind_instructions = {kind: text for kind, text in kind_instructions.items() if text.strip()}
    if instructions is not None:
        project.instructions = instructions


def project_view(project: Project) -> dict:
    return {
        "id": project.id,
        "name": project.name,
        "locked": project.locked_at is not None,
        "instructions": project.instructions,
        "kind_instructions": project.kind_instructions or {},
    }


# ----- labelers -----


def labeler_progress(db: DB, project: Project) -> list[dict]:
    """Every labeler (those with no task in this project too, so the lead can assign them): tasks done (submitted)
    of assigned in this project, by status, and the last time one of its assignments here changed."""
    rows = db.execute(
        select(Assignment.user_id, Assignment.status, func.count(), func.max(Assignment.updated_at))
        .join(Task, Assignment.task_id == Task.id)
        .where(Task.project_id == project.id)
        .group_by(Assignment.user_id, Assignment.status)
    ).all()
    counts: dict[int, dict] = defaultdict(lambda: {"pending": 0, "draft": 0, "skipped": 0, "submitted": 0})
    last: dict[int, object] = {}
    for user_id, status, count, latest in rows:
        counts[user_id][status] = count
        latest = aware(latest)
        if user_id not in last or latest > last[user_id]:
            last[user_id] = latest
    labelers = []
    for user in db.scalars(select(User).order_by(User.username)):
        by_status = counts[user.id] if user.id in counts else {"pending": 0, "draft": 0, "skipped": 0, "submitted": 0}
        labelers.append(
            {
                "id": user.id,
                "username": user.username,
                "active": user.active,
                "assigned": sum(by_status.values()),
                "done": by_status["submitted"],
                **by_status,
                "last_activity": _when(last.get(user.id)),
            }
        )
    return labelers


def assign(db: DB, project: Project, usernames: list[str], task_ids: list[int]) -> dict:
    """Each chosen (active) labeler gets each task of the batch it does not hold yet; existing assignments stay."""
    task_ids = list(dict.fromkeys(task_ids))
    if not usernames:
        raise AppError(422, "labelers: choose at least one labeler")
    if not 1 <= len(task_ids) <= MAX_BATCH:
        raise AppError(422, f"task_ids: {len(task_ids)} tasks; 1 to {MAX_BATCH} per request")
    users = list(db.scalars(select(User).where(User.username.in_(usernames))))
    missing = sorted(set(usernames) - {u.username for u in users})
    if missing:
        raise AppError(422, f"labelers: no labeler(s) {missing}")
    inactive = sorted(u.username for u in users if not u.active)
    if inactive:
        raise AppError(422, f"labelers: deactivated labeler(s) {inactive} get no new tasks")
    found = set(db.scalars(select(Task.id).where(Task.project_id == project.id, Task.id.in_(task_ids))))
    unknown = [t for t in task_ids if t not in found]
    if unknown:
        raise AppError(422, f"task_ids: no task(s) {unknown[:20]} in project {project.id}")
    held = set(
        db.execute(
            select(Assignment.task_id, Assignment.user_id).where(
                Assignment.task_id.in_(task_ids), Assignment.user_id.in_([u.id for u in users])
            )
        ).all()
    )
    new = [
        Assignment(task_id=task_id, user_id=user.id)
        for task_id in task_ids
        for user in users
        if (task_id, user.id) not in held
    ]
    db.add_all(new)
    db.flush()
    return {"assignments_created": len(new), "already_assigned": len(held), "tasks": len(task_ids)}


# ----- answers -----


def _label_view(label: Label | None) -> dict | None:
    if label is None:
        return None
    return {
        "label_id": label.id,
        "version": label.version,
        "ranking": label.ranking,
        "demonstration": label.demonstration,
        "good": label.good,
        "quality": label.quality,
        "flags": label.flags,
        "submitted_at": _when(label.created_at),
    }


def answers_by_task(db: DB, task_ids: list[int]) -> dict[int, list[dict]]:
    """task id -> every assignment of it (labeler, status) with its latest label, by labeler name."""
    if not task_ids:
        return {}
    latest = (
        select(Label.assignment_id, func.max(Label.version).label("version"))
        .join(Assignment, Label.assignment_id == Assignment.id)
        .where(Assignment.task_id.in_(task_ids))
        .group_by(Label.assignment_id)
        .subquery()
    )
    labels = {
        label.assignment_id: label
        for label in db.scalars(
            select(Label).join(
                latest, (Label.assignment_id == latest.c.assignment_id) & (Label.version == latest.c.version)
            )
        )
    }
    answers: dict[int, list[dict]] = defaultdict(list)
    rows = db.execute(
        select(Assignment, User.username)
        .join(User, Assignment.user_id == User.id)
        .where(Assignment.task_id.in_(task_ids))
        .order_by(User.username)
    ).all()
    for assignment, username in rows:
        answers[assignment.task_id].append(
            {
                "assignment_id": assignment.id,
                "labeler": username,
                "status": assignment.status,
                "updated_at": _when(assignment.updated_at),
                "label": _label_view(labels.get(assignment.id)),
            }
        )
    return answers


def adjudication_view(adjudication: Adjudication | None) -> dict | None:
    if adjudication is None:
        return None
    return {
        "adjudication_id": adjudication.id,
        "label_id": adjudication.label_id,
        "ranking": adjudication.ranking,
        "demonstration": adjudication.demonstration,
        "good": adjudication.good,
        "note": adjudication.note,
        "decided_at": _when(adjudication.decided_at),
    }


def _adjudications(db: DB, task_ids) -> dict[int, Adjudication]:
    return {a.task_id: a for a in db.scalars(select(Adjudication).where(Adjudication.task_id.in_(list(task_ids))))}


def _responses(db: DB, prompt_ids) -> dict[int, list[dict]]:
    responses: dict[int, list[dict]] = defaultdict(list)
    query = select(Response).where(Response.prompt_id.in_(list(prompt_ids))).order_by(Response.position)
    for response in db.scalars(query):
        responses[response.prompt_id].append(
            {"index": response.position, "text": response.text, "generation_id": response.generation_id}
        )
    return responses


def browse(db: DB, project: Project, page: int, per_page: int) -> dict:
    """One page of the project's prompts (oldest first): responses, tasks, every labeler's latest answer and the
    adjudication, if any."""
    page, per_page = _page(page, per_page)
    total = db.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == project.id))
    prompts = list(
        db.scalars(
            select(Prompt)
            .where(Prompt.project_id == project.id)
            .order_by(Prompt.id)
            .offset((page - 1) * per_page)
            .limit(per_page)
        )
    )
    ids = [p.id for p in prompts]
    tasks = list(db.scalars(select(Task).where(Task.prompt_id.in_(ids)).order_by(Task.id))) if ids else []
    answers = answers_by_task(db, [t.id for t in tasks])
    decided = _adjudications(db, [t.id for t in tasks])
    responses = _responses(db, ids)
    tasks_by_prompt: dict[int, list[dict]] = defaultdict(list)
    for task in tasks:
        tasks_by_prompt[task.prompt_id].append(
            {
                "task_id": task.id,
                "kind": task.kind,
                "answers": answers.get(task.id, []),
                "adjudication": adjudication_view(decided.get(task.id)),
            }
        )
    return {
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": max(1, -(-total // per_page)),
        "prompts": [
            {"prompt_id": p.id, "text": p.text, "responses": responses.get(p.id, []), "tasks": tasks_by_prompt[p.id]}
            for p in prompts
        ],
    }


# ----- review -----


def _disagreement(task: Task, k: int, submitted: list[dict]) -> dict | None:
    """How the submitted answers to one task differ, or None when they agree (or fewer than two were given)."""
    if len(submitted) < 2:
        return None
    if task.kind == "ranking":
        ranks = [parse_ranking(f"label {a['label']['label_id']}", a["label"]["ranking"], k) for a in submitted]
        if len(set(ranks)) == 1:
            return None
        pooled = pooled_agreement([ranks])
        return {"pairwise_agreement": pooled.pairwise_agreement, "kendall_tau_mean": pooled.kendall_tau_mean}
    if task.kind == "demonstration":
        texts = {a["label"]["demonstration"].strip() for a in submitted}
        return None if len(texts) == 1 else {"pairwise_agreement": None, "kendall_tau_mean": None}
    if task.kind == "binary":
        verdicts = [a["label"]["good"] for a in submitted]
        if len(set(verdicts)) == 1:
            return None
        # the share of labeler pairs that gave the response the same verdict
        return {"pairwise_agreement": pooled_binary_agreement([verdicts]).pairwise_agreement, "kendall_tau_mean": None}
    return None  # a kind this review does not compare yet


def disagreements(db: DB, project: Project, page: int, per_page: int, status: str = "all") -> dict:
    """Tasks whose labelers disagree (ranking: not all the same ranks; demonstration: different texts; binary: not
    all the same verdict), undecided first, then the least agreement first. `status`: open (undecided), decided, or
    all. A binary task names the response its labelers judged (`response_index`)."""
    page, per_page = _page(page, per_page)
    if status not in ("open", "decided", "all"):
        raise AppError(422, f"status: one of ['open', 'decided', 'all'], got {status!r}")
    overlapping = select(Assignment.task_id).where(Assignment.status == "submitted").group_by(Assignment.task_id)
    tasks = list(
        db.scalars(
            select(Task)
            .where(Task.project_id == project.id, Task.id.in_(overlapping.having(func.count() >= 2)))
            .order_by(Task.id)
        )
    )
    answers = answers_by_task(db, [t.id for t in tasks])
    decided = _adjudications(db, [t.id for t in tasks])
    k_by_prompt = dict(
        db.execute(
            select(Response.prompt_id, func.count())
            .where(Response.prompt_id.in_([t.prompt_id for t in tasks]))
            .group_by(Response.prompt_id)
        ).all()
    )
    found = []
    for task in tasks:
        submitted = [a for a in answers[task.id] if a["status"] == "submitted" and a["label"] is not None]
        difference = _disagreement(task, k_by_prompt.get(task.prompt_id, 0), submitted)
        if difference is None or (status == "open" and task.id in decided):
            continue
        if status == "decided" and task.id not in decided:
            continue
        found.append((task, difference))
    found.sort(
        key=lambda item: (item[0].id in decided, item[1]["pairwise_agreement"] or 0.0, item[0].id)
    )  # undecided first, then the most disputed
    chosen = found[(page - 1) * per_page : page * per_page]
    prompts = {p.id: p for p in db.scalars(select(Prompt).where(Prompt.id.in_([t.prompt_id for t, _ in chosen])))}
    responses = _responses(db, prompts)
    judged = [t.response_id for t, _ in chosen if t.response_id is not None]
    positions = dict(db.execute(select(Response.id, Response.position).where(Response.id.in_(judged))).all())
    return {
        "page": page,
        "per_page": per_page,
        "total": len(found),
        "pages": max(1, -(-len(found) // per_page)),
        "tasks": [
            {
                "task_id": task.id,
                "kind": task.kind,
                "prompt_id": task.prompt_id,
                "prompt": prompts[task.prompt_id].text,
                "responses": responses.get(task.prompt_id, []),
                **({"response_index": positions[task.response_id]} if task.response_id is not None else {}),
                **difference,
                "answers": answers[task.id],
                "adjudication": adjudication_view(decided.get(task.id)),
            }
            for task, difference in chosen
        ],
    }


def get_task(db: DB, task_id: int) -> Task:
    return get_row(db, Task, task_id, "task_id", "task")


def _final_ranking(task: Task, ranking) -> list:
    k = len(task.prompt.responses)
    try:
        ranks = parse_ranking("ranking", ranking, k)
    except PreferError as error:
        raise AppError(422, str(error)) from None
    if len(set(ranks)) == 1:
        raise AppError(422, "ranking: every response ties; a final ranking orders at least two of them")
    return ranking


def adjudicate(
    db: DB,
    task: Task,
    *,
    label_id: int | None,
    ranking,
    demonstration: str | None,
    note: str,
    good: bool | None = None,
) -> Adjudication:
    """Record (or replace) the final answer to a task: one of its labels, or a ranking / demonstration / binary
    verdict (`good`)."""
    choices = (("label_id", label_id), ("ranking", ranking), ("demonstration", demonstration), ("good", good))
    given = [name for name, value in choices if value is not None]
    if len(given) != 1:
        raise AppError(422, f"give exactly one of label_id, ranking, demonstration, good; got {given or 'none'}")
    if label_id is not None:
        owner = db.scalar(
            select(Assignment.task_id).join(Label, Label.assignment_id == Assignment.id).where(Label.id == label_id)
        )
        if owner != task.id:
            raise AppError(422, f"label_id {label_id}: not an answer to task {task.id}")
    elif ranking is not None:
        if task.kind != "ranking":
            raise AppError(422, f"ranking: task {task.id} is a {task.kind} task")
        ranking = _final_ranking(task, ranking)
    elif good is not None:
        if task.kind != "binary":
            raise AppError(422, f"good: task {task.id} is a {task.kind} task")
    else:
        if task.kind != "demonstration":
            raise AppError(422, f"demonstration: task {task.id} is a {task.kind} task")
        if not demonstration.strip() or len(demonstration) > MAX_TEXT:
            raise AppError(422, f"demonstration: 1 to {MAX_TEXT} characters, not only spaces")
    adjudication = db.scalar(select(Adjudication).where(Adjudication.task_id == task.id))
    if adjudication is None:
        adjudication = Adjudication(task_id=task.id)
        db.add(adjudication)
    adjudication.label_id, adjudication.ranking, adjudication.demonstration = label_id, ranking, demonstration
    adjudication.good = good
    adjudication.note, adjudication.decided_at = note, now()
    db.flush()
    return adjudication


def withdraw(db: DB, task: Task) -> bool:
    """Remove a task's adjudication (the labelers' answers are exported again); -> whether there was one."""
    adjudication = db.scalar(select(Adjudication).where(Adjudication.task_id == task.id))
    if adjudication is not None:
        db.delete(adjudication)
        db.flush()
    return adjudication is not None


# ----- export -----


def final_answers(db: DB, rows: list[tuple]) -> list[tuple]:
    """export.final_labels' (label, assignment, task, user) rows with each adjudicated task's rows replaced by
    one: the accepted label (and its labeler), or the lead's written answer (exported as labeler "admin"). The
    replacing label carries `adjudication` ({"id", "accepted_label", "replaced_labels"}) for the provenance."""
    decided = _adjudications(db, {task.id for _, _, task, _ in rows})
    if not decided:
        return rows
    out, done = [], set()
    for label, assignment, task, user in rows:
        adjudication = decided.get(task.id)
        if adjudication is None:
            out.append((label, assignment, task, user))
            continue
        if task.id in done:
            continue
        done.add(task.id)
        replaced = sorted(lbl.id for lbl, _, t, _ in rows if t.id == task.id)
        info = {"id": adjudication.id, "accepted_label": adjudication.label_id, "replaced_labels": replaced}
        if adjudication.label_id is not None:
            accepted = db.get(Label, adjudication.label_id)
            fields = {c.key: getattr(accepted, c.key) for c in Label.__table__.columns}
            final_user = db.get(User, accepted.user_id)
        else:
            fields = {c.key: None for c in Label.__table__.columns}
            fields.update(
                ranking=adjudication.ranking,
                demonstration=adjudication.demonstration,
                good=adjudication.good,
                flags=[],
                created_at=aware(adjudication.decided_at),
            )
            final_user = SimpleNamespace(username=ADMIN_NAME)
        out.append((SimpleNamespace(**fields, adjudication=info), assignment, task, final_user))
    return out
