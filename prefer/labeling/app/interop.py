"""Rankings made in other labeling tools, imported as a new project (`prefer import`): prompts, their responses,
and each annotator's ranking as the label of an imported labeler, or (as_tasks) only prompts and responses, as
ranking tasks for this app's labelers.

Two documented JSON exports are read (our own reading of their documentation, no code of theirs):

- **Argilla** (`dataset.records.to_json(path)`, Argilla 2): a JSON list of records
  `{"id", "fields": {"prompt": ..., "response-1": ..., ...}, "responses": {QUESTION: [{"value", "user_id",
  "status"?}]}, ...}`. A RankingQuestion's value lists option values best first; each option value names the
  field that holds its response. The server's form, `[{"value": NAME, "rank": R}, ...]` (Argilla 1.x
  FeedbackDataset), is read too: equal ranks are ties. Responses whose status is not "submitted" are left out.
- **Label Studio** (Export -> JSON, `List` + `Ranker` tags): a JSON list of tasks `{"id", "data": {"prompt": ...,
  ITEMS: [{"id", "text" | "body" | "content", ...}]}, "annotations": [{"completed_by", "was_cancelled", "result":
  [{"type": "ranker", "value": {"ranker": {NAME: [item ids, best first]}}}]}]}`. With `Bucket`s the value holds one
  list per bucket, in the buckets' order: a bucket's items tie (the "_" list of unsorted items is left out, so
  every item must be in a bucket). Cancelled annotations are left out.

A malformed file is one `PreferError` naming the file and the record (`f.json: record 3: ...`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session as DB

from prefer.data.formats import MAX_RESPONSES, MIN_RESPONSES, parse_ranking
from prefer.errors import PreferError
from prefer.labeling.app import service
from prefer.labeling.app.models import Assignment, Label, Project, Prompt, Task, User

FORMATS = ("argilla", "label-studio")
IMPORTED_HASH = "!imported: no password logs in"  # not an argon2 hash: verify_password refuses every password
TEXT_KEYS = ("text", "body", "content")  # where a Label Studio list item holds its text, first found


@dataclass
class Record:
    """One prompt with its responses and the rankings (file form, indices into `responses`) by annotator."""

    where: str
    prompt: str
    responses: list[str]
    answers: list[tuple[str, list]] = field(default_factory=list)


def _load_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PreferError(f"{path}: cannot read ({error.strerror or error})") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise PreferError(f"{path}: not a JSON file ({error})") from None
    except RecursionError:
        raise PreferError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, list) or not data:
        raise PreferError(f"{path}: expected a JSON list of records (an export of the tool), got {type(data).__name__}")
    return data


def _text(where: str, value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PreferError(f"{where}: {what} must be a non-empty string")
    if service.NUL in value:
        raise PreferError(f"{where}: {what} contains a NUL character (\\u0000)")
    return value


def _groups_to_ranking(where: str, groups: list[list[str]], names: list[str]) -> list:
    """Ordered groups of names (a group: tied) -> a ranking in prefer's file form over the indices of `names`."""
    index = {name: i for i, name in enumerate(names)}
    ranking = []
    for group in groups:
        unknown = [name for name in group if name not in index]
        if unknown:
            raise PreferError(f"{where}: the ranking names {unknown!r}, which are not among the responses {names!r}")
        ranking.append(index[group[0]] if len(group) == 1 else [index[name] for name in group])
    try:
        ranks = parse_ranking("ranking", ranking, len(names))
    except PreferError as error:
        raise PreferError(f"{where}: {error}") from None
    if len(set(ranks)) == 1:
        raise PreferError(f"{where}: every response ties; nothing is preferred")
    return ranking


def _check_responses(where: str, responses: list[str]) -> list[str]:
    if not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
        raise PreferError(f"{where}: {len(responses)} responses; a ranking needs {MIN_RESPONSES} to {MAX_RESPONSES}")
    return responses


# ----- Argilla -----


def _argilla_groups(where: str, value) -> list[list[str]]:
    if not isinstance(value, list) or not value:
        raise PreferError(f"{where}: a ranking value must be a non-empty list")
    if all(isinstance(v, str) for v in value):  # the SDK's form: option values, best first
        return [[v] for v in value]
    by_rank: dict[int, list[str]] = {}
    for entry in value:  # the server's form: {"value", "rank"}, equal ranks tie
        if not (isinstance(entry, dict) and isinstance(entry.get("value"), str) and type(entry.get("rank")) is int):
            raise PreferError(f"{where}: ranking entries must be option values or {{'value': str, 'rank': int}}")
        by_rank.setdefault(entry["rank"], []).append(entry["value"])
    return [by_rank[rank] for rank in sorted(by_rank)]


def _argilla_question(path: Path, records: list, question: str | None) -> str | None:
    """The ranking question: the one named, else the only one whose values are lists."""
    if question is not None:
        return question
    found = {
        name
        for record in records
        if isinstance(record, dict) and isinstance(record.get("responses"), dict)
        for name, answers in record["responses"].items()
        if isinstance(answers, list) and any(isinstance(a, dict) and isinstance(a.get("value"), list) for a in answers)
    }
    if len(found) > 1:
        raise PreferError(f"{path}: several ranking questions {sorted(found)}; name one with --question")
    return next(iter(found), None)


def read_argilla(
    path: str | Path, *, prompt_field: str = "prompt", question: str | None = None, response_fields=None
) -> list[Record]:
    """The records of an Argilla export; `response_fields`: the fields that hold responses (default: every
    other text field of the record, in its order)."""
    path = Path(path)
    data = _load_list(path)
    question = _argilla_question(path, data, question)
    out = []
    for number, record in enumerate(data, 1):
        where = f"{path}: record {number}"
        fields = record.get("fields") if isinstance(record, dict) else None
        if not isinstance(fields, dict):
            raise PreferError(f"{where}: expected an object with 'fields' (an Argilla record)")
        prompt = _text(where, fields.get(prompt_field), f"field {prompt_field!r} (the prompt)")
        names = list(response_fields or [k for k, v in fields.items() if k != prompt_field and isinstance(v, str)])
        responses = _check_responses(where, [_text(where, fields.get(n), f"field {n!r}") for n in names])
        item = Record(where, prompt, responses)
        answers = (record.get("responses") or {}).get(question, []) if question else []
        if not isinstance(answers, list):
            raise PreferError(f"{where}: responses of {question!r} must be a list")
        for answer in answers:
            if not isinstance(answer, dict) or "value" not in answer:
                raise PreferError(f"{where}: a response of {question!r} must be an object with a 'value'")
            if answer.get("status") not in (None, "submitted"):
                continue  # a draft or a discarded answer is no label
            ranking = _groups_to_ranking(where, _argilla_groups(where, answer["value"]), names)
            item.answers.append((str(answer.get("user_id") or ""), ranking))
        out.append(item)
    return out


# ----- Label Studio -----


def _label_studio_items(where: str, data: dict, items_field: str | None) -> list[dict]:
    if items_field is None:
        lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)]
        if len(lists) != 1:
            raise PreferError(f"{where}: cannot tell which data field lists the responses ({lists}); name it")
        items_field = lists[0]
    items = data.get(items_field)
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
        raise PreferError(f"{where}: data field {items_field!r} must list objects with an 'id'")
    return items


def _item_text(where: str, item: dict) -> str:
    for key in TEXT_KEYS:
        if isinstance(item.get(key), str):
            return _text(where, item[key], f"item {item['id']!r}: {key!r}")
    raise PreferError(f"{where}: item {item['id']!r} holds no text (one of {list(TEXT_KEYS)})")


def _ranker_groups(where: str, annotation: dict) -> list[list[str]] | None:
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "ranker"]
    if not results:
        return None
    if len(results) > 1:
        raise PreferError(f"{where}: an annotation with {len(results)} ranker results; one is expected")
    ranker = (results[0].get("value") or {}).get("ranker")
    if not isinstance(ranker, dict) or not ranker:
        raise PreferError(f"{where}: a ranker result must hold value.ranker, an object of id lists")
    groups = [ids for name, ids in ranker.items() if name != "_"]
    if not all(isinstance(ids, list) for ids in groups):
        raise PreferError(f"{where}: value.ranker must map names to lists of item ids")
    if len(groups) == 1:  # List + Ranker: one list, best first
        return [[str(i)] for i in groups[0]]
    return [[str(i) for i in ids] for ids in groups if ids]  # buckets, in order: a bucket's items tie


def _annotator(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return "" if who is None else str(who)


def read_label_studio(
    path: str | Path, *, prompt_field: str = "prompt", items_field: str | None = None
) -> list[Record]:
    path = Path(path)
    out = []
    for number, task in enumerate(_load_list(path), 1):
        where = f"{path}: record {number}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise PreferError(f"{where}: expected an object with 'data' (a Label Studio task)")
        prompt = _text(where, data.get(prompt_field), f"data field {prompt_field!r} (the prompt)")
        items = _label_studio_items(where, data, items_field)
        names = [str(item["id"]) for item in items]
        record = Record(where, prompt, _check_responses(where, [_item_text(where, item) for item in items]))
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict):
                raise PreferError(f"{where}: an annotation must be an object")
            if annotation.get("was_cancelled"):
                continue
            groups = _ranker_groups(where, annotation)
            if groups is not None:
                record.answers.append((_annotator(annotation), _groups_to_ranking(where, groups, names)))
        out.append(record)
    return out


def read_export(path: str | Path, tool: str, *, prompt_field: str = "prompt", question=None, items_field=None):
    if tool == "argilla":
        return read_argilla(path, prompt_field=prompt_field, question=question)
    if tool == "label-studio":
        return read_label_studio(path, prompt_field=prompt_field, items_field=items_field)
    raise PreferError(f"--format: one of {list(FORMATS)}, got {tool!r}")


# ----- into the database -----


def _labeler_names(records: list[Record], labeler: str) -> dict[str, str]:
    """annotator -> labeler name: `labeler` when the file has one annotator, else `labeler-ANNOTATOR`."""
    annotators = sorted({who for record in records for who, _ in record.answers})
    if len(annotators) <= 1:
        return {who: labeler for who in annotators}
    return {who: f"{labeler}-{re.sub(r'[^A-Za-z0-9_.@-]', '_', who) or 'unknown'}" for who in annotators}


def _imported_labeler(db: DB, username: str) -> User:
    user = db.scalar(select(User).where(User.username == username))
    if user is None:  # inactive: it cannot log in, and new tasks skip it
        user = User(username=username, password_hash=IMPORTED_HASH, active=False)
        db.add(user)
        db.flush()
    elif user.password_hash != IMPORTED_HASH:
        raise PreferError(f"--labeler: {username!r} is a labeler of this app; name the imported labeler otherwise")
    return user


def import_records(
    db: DB, project_name: str, records: list[Record], *, labeler: str = "imported", as_tasks: dict | None = None
) -> dict:
    """A new project from imported records, in the caller's transaction. `as_tasks` ({"overlap", "labelers"}):
    make every prompt a ranking task for this app's labelers instead of importing the answers."""
    by_prompt, where, answers = {}, {}, {}
    for record in records:
        if record.prompt in by_prompt and by_prompt[record.prompt] != record.responses:
            raise PreferError(f"{record.where}: the same prompt as {where[record.prompt]}, with other responses")
        by_prompt[record.prompt], where[record.prompt] = record.responses, record.where
        answers.setdefault(record.prompt, []).extend(record.answers)
    if db.scalar(select(Project).where(Project.name == project_name)) is not None:
        raise PreferError(f"--project: a project named {project_name!r} exists; import into a new project")
    try:
        project = service.create_project(db, service.check_name("--project", project_name))
        service.attach_responses(db, project, by_prompt, where=where)
        if as_tasks is not None:
            made = service.create_tasks(db, project, "ranking", as_tasks["overlap"], as_tasks["labelers"])
            return {"project": project.name, "prompts": len(by_prompt), **made, "labels_imported": 0}
    except service.AppError as error:
        raise PreferError(error.message) from None
    names = _labeler_names(records, labeler)
    users = {who: _imported_labeler(db, name) for who, name in names.items()}
    prompts = {p.text: p for p in db.scalars(select(Prompt).where(Prompt.project_id == project.id))}
    labels = 0
    for text, given in answers.items():
        if not given:
            continue
        task = Task(project_id=project.id, prompt_id=prompts[text].id, kind="ranking")
        db.add(task)
        db.flush()
        seen = set()
        for who, ranking in given:
            if who in seen:
                raise PreferError(f"{where[text]}: annotator {who!r} ranked this prompt twice")
            seen.add(who)
            assignment = Assignment(task_id=task.id, user_id=users[who].id, status="submitted")
            db.add(assignment)
            db.flush()
            db.add(Label(assignment_id=assignment.id, user_id=users[who].id, version=1, ranking=ranking, flags=[]))
            labels += 1
    db.flush()
    return {
        "project": project.name,
        "prompts": len(by_prompt),
        "labelers": sorted(names.values()),
        "labels_imported": labels,
    }
