"""Responses sampled from a checkpoint, as a background job: the request that asks for them records a
`generations` row (status "running") and returns at once; a thread of the server process loads the checkpoint
and samples a batch of prompts at a time in no transaction, then writes each batch's responses and its progress in
one short transaction. The admin reads the progress from the row (any worker can serve it) and may cancel: the job
stops before its next batch, keeping the batches already written.

A checkpoint whose tokenizer has a chat template is asked each prompt as one user turn with the generation prompt
(`prefer.labeling.responses.text_queries`, as `prefer sample --prompt` asks); the rendering is kept with the
responses (`Prompt.rendered`) for the export, while labelers read the prompt as written.

Sampled text has its NUL characters removed (PostgreSQL's text type cannot hold one); a sample empty after that
is dropped, and a prompt left with fewer than two responses gets none. Batch b (of `BATCH_PROMPTS` prompts) samples
with seed + b * BATCH_PROMPTS, so a generation is reproducible from its settings and the batch size in its result.

`collect_round` runs the same job in the foreground for `prefer round`: a collection round from the current policy,
whose sampled prompts become a new batch of tasks.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session as DB

from prefer.data.formats import MIN_RESPONSES, read_prompts, read_records
from prefer.errors import PreferError
from prefer.labeling.app import service
from prefer.labeling.app.models import Generation, Project, Prompt, Response, Task, User, now
from prefer.labeling.app.service import NUL, AppError

BATCH_PROMPTS = 16
ACTIVE = ("queued", "running")


def _unranked(db: DB, project: Project) -> list[str]:
    """The prompts whose responses may still change: no ranking or binary task refers to them yet."""
    ranked = set(
        db.scalars(select(Task.prompt_id).where(Task.project_id == project.id, Task.kind.in_(service.RESPONSE_KINDS)))
    )
    prompts = db.scalars(select(Prompt).where(Prompt.project_id == project.id).order_by(Prompt.id))
    return [p.text for p in prompts if p.id not in ranked]


def create(
    db: DB, project: Project, checkpoint: str, settings: dict, *, only: list[str] | None = None
) -> tuple[Generation, list[str]]:
    """The job's row, inside the caller's (short) transaction; refused before anything is written when the
    checkpoint is not a directory, no prompt needs responses, or a job of this project is still running.
    `only`: sample for these prompts (those of them without a ranking or binary task), not every open one."""
    if NUL in checkpoint or not Path(checkpoint).is_dir():
        raise AppError(422, f"checkpoint: {checkpoint!r} is not a directory on the server")
    running = db.scalar(select(Generation).where(Generation.project_id == project.id, Generation.status.in_(ACTIVE)))
    if running is not None:
        raise AppError(409, f"project_id {project.id}: generation {running.id} is still running; wait or cancel it")
    prompts = _unranked(db, project)
    if only is not None:
        wanted = set(only)
        prompts = [p for p in prompts if p in wanted]
    if not prompts:
        raise AppError(422, f"project_id {project.id}: no prompt without a ranking or binary task to generate for")
    generation = Generation(
        project_id=project.id,
        checkpoint=checkpoint,
        settings=settings,
        status="running",
        prompts_total=len(prompts),
        prompts_done=0,
    )
    db.add(generation)
    db.flush()
    return generation, prompts


def get(db: DB, generation_id: int) -> Generation:
    return service.get_row(db, Generation, generation_id, "generation_id", "generation")


# what the API shows of a generation, after its generation_id
VIEW_FIELDS = (
    "project_id",
    "status",
    "checkpoint",
    "settings",
    "prompts_total",
    "prompts_done",
    "cancel_requested",
    "result",
    "error",
)


def view(generation: Generation) -> dict:
    return service.row_view(generation, "generation_id", VIEW_FIELDS)


def list_views(db: DB, project: Project) -> list[dict]:
    query = select(Generation).where(Generation.project_id == project.id).order_by(Generation.id.desc())
    return [view(g) for g in db.scalars(query)]


def request_cancel(db: DB, generation_id: int) -> Generation:
    generation = get(db, generation_id)
    if generation.status not in ACTIVE:
        raise AppError(409, f"generation_id {generation_id}: already {generation.status}")
    generation.cancel_requested = True
    return generation


def fail_interrupted(sessionmaker) -> int:
    """At server start: a job still "running" belonged to a server that stopped; mark it failed."""
    with sessionmaker() as db:
        count = db.execute(
            update(Generation)
            .where(Generation.status.in_(ACTIVE))
            .values(status="failed", error="the server stopped while it ran", finished_at=now())
        ).rowcount
        db.commit()
    return count


def start(state, generation_id: int, prompts: list[str], checkpoint: str, settings: dict, *, device: str):
    thread = threading.Thread(
        target=run,
        args=(state.sessionmaker, generation_id, prompts, checkpoint, settings),
        kwargs={"device": device},
        name=f"prefer-generation-{generation_id}",
        daemon=True,
    )
    state.jobs[generation_id] = thread
    thread.start()
    return thread


def _finish(sessionmaker, generation_id: int, **values) -> None:
    with sessionmaker() as db:
        db.execute(update(Generation).where(Generation.id == generation_id).values(finished_at=now(), **values))
        db.commit()


def run(sessionmaker, generation_id: int, prompts: list[str], checkpoint: str, settings: dict, *, device: str):
    """The job itself (a thread): never raises; its outcome is the row's status, result or error."""
    totals = {"prompts_with_responses": 0, "responses_added": 0, "prompts_dropped_fewer_than_two_nonempty": 0}
    totals["prompts_skipped_ranked_meanwhile"] = 0
    try:
        # torch loads here, not at start-up: the app's one import across its no-torch contract (pyproject.toml)
        from prefer.labeling import app_sampler

        model, tokenizer = app_sampler.load(checkpoint, device)
        totals["chat_template"] = app_sampler.chat_template(tokenizer)  # prompts asked as a user turn
        for start in range(0, len(prompts), BATCH_PROMPTS):
            batch = prompts[start : start + BATCH_PROMPTS]
            with sessionmaker() as db:  # a read; the cancel may come while this batch samples, too
                if db.scalar(select(Generation.cancel_requested).where(Generation.id == generation_id)):
                    break
            # no transaction is open while the model samples
            seed = settings["seed"] + start
            samples, rendered = app_sampler.sample_batch(model, tokenizer, batch, settings, seed=seed)
            by_prompt = {}
            for prompt, texts in zip(batch, samples):
                kept = [t.replace(NUL, "") for t in texts]
                kept = [t for t in kept if t.strip()]  # an empty sample is nothing to rank
                if len(kept) >= MIN_RESPONSES:
                    by_prompt[prompt] = kept
                else:
                    totals["prompts_dropped_fewer_than_two_nonempty"] += 1
            with sessionmaker() as db:  # the batch's one short write
                generation = db.get(Generation, generation_id)
                project = db.get(Project, generation.project_id)
                open_prompts = set(_unranked(db, project))  # a ranking task made meanwhile fixes its responses
                skipped = [p for p in by_prompt if p not in open_prompts]
                for prompt in skipped:
                    del by_prompt[prompt]
                result = service.attach_responses(
                    db,
                    project,
                    by_prompt,
                    where={t: f"generated for prompt {t[:40]!r}" for t in by_prompt},
                    generation=generation,
                    rendered=rendered,
                )
                totals["prompts_with_responses"] += result["prompts_with_responses"]
                totals["responses_added"] += result["responses_added"]
                totals["prompts_skipped_ranked_meanwhile"] += len(skipped)
                generation.prompts_done = start + len(batch)
                generation.result = {"generation_id": generation_id, **totals, "batch_prompts": BATCH_PROMPTS}
                db.commit()
        else:
            _finish(sessionmaker, generation_id, status="done", result=_result(generation_id, totals))
            return
        _finish(sessionmaker, generation_id, status="cancelled", result=_result(generation_id, totals))
    except (PreferError, AppError) as error:
        _finish(sessionmaker, generation_id, status="failed", error=str(error), result=_result(generation_id, totals))
    except Exception as error:  # noqa: BLE001 - a thread has no caller to raise to; the admin reads the row
        _finish(
            sessionmaker,
            generation_id,
            status="failed",
            error=f"{type(error).__name__}: {error}",
            result=_result(generation_id, totals),
        )


def _result(generation_id: int, totals: dict) -> dict:
    return {"generation_id": generation_id, **totals, "batch_prompts": BATCH_PROMPTS}


# ----- collection rounds: the current policy's samples as a new batch of tasks -----


def _open_project(db: DB, name: str) -> Project:
    project = db.scalar(select(Project).where(Project.name == name))
    if project is None:
        names = list(db.scalars(select(Project.name).order_by(Project.id)))
        raise PreferError(f"--project: no project named {name!r} (projects: {names})")
    return project


def _check_labelers(db: DB, tasks: dict) -> None:
    """The round's labelers and overlap, checked before minutes of sampling (create_tasks checks them again)."""
    query = select(User.username).where(User.active.is_(True))
    if tasks["labelers"]:
        query = query.where(User.username.in_(tasks["labelers"]))
    active = set(db.scalars(query))
    missing = sorted(set(tasks["labelers"] or []) - active)
    if missing:
        raise AppError(422, f"labelers: no active labeler(s) {missing}")
    if not 1 <= tasks["overlap"] <= len(active):
        raise AppError(
            422, f"overlap: {tasks['overlap']} labelers per task, but {len(active)} labeler(s) are available"
        )


def _round_tasks(sessionmaker, project_name: str, prompt_ids: list[int], tasks: dict) -> dict:
    """The round's tasks (one short transaction): `tasks` holds kind, overlap and labelers; -> counts and ids."""
    with sessionmaker() as db:
        project = _open_project(db, project_name)
        made = service.create_tasks(
            db, project, tasks["kind"], tasks["overlap"], tasks["labelers"], prompt_ids=prompt_ids
        )
        ids = list(
            db.scalars(
                select(Task.id).where(Task.prompt_id.in_(prompt_ids), Task.kind == tasks["kind"]).order_by(Task.id)
            )
        )
        db.commit()
    return {**made, "task_ids": ids}


def collect_round(
    sessionmaker,
    project_name: str,
    *,
    checkpoint: str,
    settings: dict,
    tasks: dict,
    prompts: bytes | None = None,
    prompts_name: str = "prompts.jsonl",
    device: str = "auto",
) -> dict:
    """One collection round, in the foreground (the `prefer round` command): add the prompts of a prompts JSONL
    (if given), sample settings["num_responses"] responses to each prompt of the file (else to every prompt that
    has no ranking or binary task yet) from `checkpoint`, exactly as the server's generation job does, and make the
    prompts that got responses a new batch of tasks (`tasks`: kind, overlap, labelers). A prompt that already has
    a ranking or binary task keeps its responses and is counted in `prompts_already_labeled`."""
    with sessionmaker() as db:
        project = _open_project(db, project_name)
        _check_labelers(db, tasks)
        wanted, added = None, {}
        if prompts is not None:
            added = service.load_prompts(db, project, prompts, prompts_name)
            wanted = [p.prompt for p in _read_prompt_texts(prompts, prompts_name)]
        open_prompts = set(_unranked(db, project))
        already = len({p for p in wanted if p not in open_prompts}) if wanted is not None else 0
        generation, batch = create(db, project, checkpoint, settings, only=wanted)
        db.commit()
        generation_id = generation.id
    run(sessionmaker, generation_id, batch, checkpoint, settings, device=device)
    with sessionmaker() as db:
        generation = get(db, generation_id)
        if generation.status != "done":
            raise PreferError(f"--checkpoint: generation {generation_id} {generation.status}: {generation.error}")
        result = dict(generation.result)
        sampled = list(db.scalars(select(Response.prompt_id).where(Response.generation_id == generation_id).distinct()))
    made = _round_tasks(sessionmaker, project_name, sampled, tasks) if sampled else {"tasks_created": 0}
    return {
        "project": project_name,
        "generation_id": generation_id,
        **added,
        "prompts_already_labeled": already,
        "generation": result,
        **made,
    }


def responses_round(sessionmaker, project_name: str, content: bytes, filename: str, tasks: dict) -> dict:
    """A round whose responses were sampled elsewhere (a responses JSONL, as the admin's upload takes): attach
    them, then make their prompts a new batch of tasks."""
    with sessionmaker() as db:
        project = _open_project(db, project_name)
        _check_labelers(db, tasks)
        uploaded = service.upload_responses(db, project, content, filename)
        texts = {
            record["prompt"]
            for _, record in service._jsonl_records(content, filename, lambda path, _: list(read_records(path, {})))
        }
        prompt_ids = list(db.scalars(select(Prompt.id).where(Prompt.project_id == project.id, Prompt.text.in_(texts))))
        db.commit()
    return {"project": project_name, **uploaded, **_round_tasks(sessionmaker, project_name, prompt_ids, tasks)}


def _read_prompt_texts(content: bytes, name: str):
    return service._jsonl_records(content, name, lambda path, _name: read_prompts(path))
