"""Labels out: the rankings and demonstrations JSONL that `prefer reward` and `prefer sft` read unchanged
(prefer.data.formats), `{"prompt", "chosen", "rejected"}` pairs for other tools (`pairs_conversational`: the same
pairs in TRL's conversational format, lists of chat messages), binary feedback as `{"prompt", "completion",
"label"}` (TRL's unpaired preference format, read by `prefer dpo dpo.loss=kto`; label a JSON boolean), and
progress / agreement figures.

Each exported record is the LAST version of one labeler's submitted answer to one task; with overlap > 1 a prompt
appears once per labeler, as in InstructGPT's training data. Provenance (labeler, task, label id and version,
quality score, flags, the generation that sampled the responses) rides along in a `provenance` field, which the
readers ignore.

A prompt whose responses were sampled through the checkpoint's chat template (`Prompt.rendered`) is written as that
rendering (one user turn and the generation prompt), the text the policy was prompted with, as `prefer label
--synthetic` writes a conversation's prompt: prefer's readers take a string prompt as it is (they apply no
template), so the reward model, DPO and SFT then train on the format the responses came from, and PPO's reward
model scores (rendering, response) pairs the same way. Its provenance keeps the text labelers read
(`prompt_shown`); `pairs_conversational` carries that text as the user's turn, for tools that apply the template.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DB

from prefer.data.formats import parse_ranking, write_jsonl
from prefer.labeling.app import review
from prefer.labeling.app.agreement import pooled_agreement, pooled_binary_agreement
from prefer.labeling.app.models import Assignment, Label, Project, Prompt, Response, Task, User

EXPORT_KINDS = ("rankings", "demonstrations", "pairs", "pairs_conversational", "binary")
DEFAULT_KINDS = ("rankings", "demonstrations", "pairs", "binary")  # what `prefer export` writes unless told


def _conversational_pair(prompt: str, chosen: str, rejected: str, provenance: dict) -> dict:
    """TRL's conversational preference format: the prompt is the user's turn, each answer the assistant's."""
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "provenance": provenance,
    }


def final_labels(db: DB, project: Project) -> list[tuple[Label, Assignment, Task, User]]:
    latest = (
        select(Label.assignment_id, func.max(Label.version).label("version")).group_by(Label.assignment_id).subquery()
    )
    rows = db.execute(
        select(Label, Assignment, Task, User)
        .join(latest, (Label.assignment_id == latest.c.assignment_id) & (Label.version == latest.c.version))
        .join(Assignment, Label.assignment_id == Assignment.id)
        .join(Task, Assignment.task_id == Task.id)
        .join(User, Assignment.user_id == User.id)
        .where(Task.project_id == project.id, Assignment.status == "submitted")
        .order_by(Task.id, User.username)
    ).all()
    return [tuple(row) for row in rows]


def _provenance(label: Label, task: Task, user: User, generation_ids: set) -> dict:
    return {
        "project": task.project_id,
        "task": task.id,
        "labeler": user.username,
        "label": label.id,
        "version": label.version,
        "submitted_at": label.created_at.isoformat(),
        "quality": label.quality,
        "flags": label.flags,
        "generations": sorted(g for g in generation_ids if g is not None),
        **({"adjudication": label.adjudication} if hasattr(label, "adjudication") else {}),  # review.final_answers
    }


def _prompt_text(prompt: Prompt, provenance: dict) -> str:
    """What the records carry as the prompt: the chat-template rendering the responses were sampled from, if any
    (the provenance then keeps the text labelers read), else the prompt as written."""
    if prompt.rendered is None:
        return prompt.text
    provenance["prompt_shown"] = prompt.text
    return prompt.rendered


def export_records(db: DB, project: Project) -> dict[str, list[dict]]:
    rankings, demonstrations, pairs, conversational, binary = [], [], [], [], []
    for label, _, task, user in review.final_answers(db, final_labels(db, project)):  # adjudicated: the lead's
        prompt = db.get(Prompt, task.prompt_id)
        if task.kind == "binary":
            response = db.get(Response, task.response_id)
            provenance = _provenance(label, task, user, {response.generation_id})
            provenance["response_index"] = response.position
            text = _prompt_text(prompt, provenance)
            binary.append({"prompt": text, "completion": response.text, "label": label.good, "provenance": provenance})
        elif task.kind == "ranking":
            responses: list[Response] = prompt.responses
            provenance = _provenance(label, task, user, {r.generation_id for r in responses})
            text = _prompt_text(prompt, provenance)
            texts = [r.text for r in responses]
            rankings.append({"prompt": text, "responses": texts, "ranking": label.ranking, "provenance": provenance})
            ranks = parse_ranking(f"label {label.id}", label.ranking, len(texts))
            for i, j in combinations(range(len(texts)), 2):
                if ranks[i] != ranks[j]:  # a tie prefers neither
                    chosen, rejected = (i, j) if ranks[i] < ranks[j] else (j, i)
                    pairs.append(
                        {
                            "prompt": text,
                            "chosen": texts[chosen],
                            "rejected": texts[rejected],
                            "provenance": provenance,
                        }
                    )
                    conversational.append(_conversational_pair(prompt.text, texts[chosen], texts[rejected], provenance))
        else:
            provenance = _provenance(label, task, user, set())
            text = _prompt_text(prompt, provenance)
            demonstrations.append({"prompt": text, "response": label.demonstration, "provenance": provenance})
    return {
        "rankings": rankings,
        "demonstrations": demonstrations,
        "pairs": pairs,
        "pairs_conversational": conversational,
        "binary": binary,
    }


def write_export(db: DB, project: Project, out_dir: str | Path, kinds=DEFAULT_KINDS) -> dict[str, Path]:
    """KIND.jsonl under out_dir for each of `kinds` (rankings, demonstrations, pairs and binary unless told; each
    written atomically; a kind with no answers yet is not written, since prefer's readers refuse an empty file)."""
    out_dir = Path(out_dir)
    written = {}
    for kind, records in export_records(db, project).items():
        if records and kind in kinds:
            write_jsonl(out_dir / f"{kind}.jsonl", records)
            written[kind] = out_dir / f"{kind}.jsonl"
    return written


def progress(db: DB, project: Project) -> dict:
    rows = db.execute(
        select(User.username, Task.kind, Assignment.status, func.count())
        .select_from(Assignment)
        .join(Task, Assignment.task_id == Task.id)
        .join(User, Assignment.user_id == User.id)
        .where(Task.project_id == project.id)
        .group_by(User.username, Task.kind, Assignment.status)
    ).all()
    statuses = ("pending", "draft", "skipped", "submitted")
    per_labeler: dict[str, dict] = defaultdict(lambda: {s: 0 for s in (*statuses, "assigned")})
    totals = {s: 0 for s in (*statuses, "assigned")}
    for username, _, status, count in rows:
        for bucket in (per_labeler[username], totals):
            bucket[status] += count
            bucket["assigned"] += count
    tasks = dict(
        db.execute(select(Task.kind, func.count()).where(Task.project_id == project.id).group_by(Task.kind)).all()
    )
    done = db.scalar(
        select(func.count()).select_from(
            select(Task.id)
            .join(Assignment, Assignment.task_id == Task.id)
            .where(Task.project_id == project.id)
            .group_by(Task.id)
            .having(func.min(Assignment.status) == "submitted")  # every assignment submitted
            .having(func.max(Assignment.status) == "submitted")
            .subquery()
        )
    )
    prompts = db.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == project.id))
    return {
        "project": project.name,
        "locked": project.locked_at is not None,
        "prompts": prompts,
        "tasks": {
            "ranking": tasks.get("ranking", 0),
            "demonstration": tasks.get("demonstration", 0),
            **({"binary": tasks["binary"]} if tasks.get("binary") else {}),  # listed once a project has them
        },
        "tasks_complete": done,
        "assignments": totals,
        "labelers": dict(sorted(per_labeler.items())),
    }


def _figures(by_task: dict[int, list[tuple[str, object]]], pooled) -> dict:
    """`pooled` over every task's answers, and per labeler: its answers against each other labeler's of the same
    task. `by_task`: task id -> (labeler, answer) of each labeler who answered it."""
    per_labeler = {}
    for name in sorted({name for labels in by_task.values() for name, _ in labels}):
        pairs = [
            [mine, theirs]
            for labels in by_task.values()
            for who, mine in labels
            if who == name
            for other, theirs in labels
            if other != name
        ]
        per_labeler[name] = pooled(pairs).as_dict()
    return {
        "overall": pooled([[answer for _, answer in labels] for labels in by_task.values()]).as_dict(),
        "per_labeler": per_labeler,
        "tasks_with_overlap": sum(len(labels) >= 2 for labels in by_task.values()),
    }


def agreement(db: DB, project: Project) -> dict:
    """The labelers' own agreement (adjudications aside) on rankings, and under "binary" (once a project has
    binary answers) the share of labeler pairs that gave a response the same verdict."""
    by_task: dict[int, list[tuple[str, tuple[int, ...]]]] = defaultdict(list)
    verdicts: dict[int, list[tuple[str, bool]]] = defaultdict(list)
    for label, _, task, user in final_labels(db, project):
        if task.kind == "ranking":
            k = len(db.get(Prompt, task.prompt_id).responses)
            by_task[task.id].append((user.username, parse_ranking(f"label {label.id}", label.ranking, k)))
        elif task.kind == "binary":
            verdicts[task.id].append((user.username, label.good))
    figures = _figures(by_task, pooled_agreement)
    return {**figures, **({"binary": _figures(verdicts, pooled_binary_agreement)} if verdicts else {})}
