"""`prefer redteam`: stochastic few-shot red-teaming of a checkpoint, several trials, JSON + plot.

Writes to out_dir: config.yaml (the resolved config; never an API key), redteam.json (per-trial curves, the mean
and a bootstrap interval per round across trials), pool_trial<i>.jsonl (every pool prompt with its score and
continuation scores) and redteam.png; all atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from prefer.config import RedteamConfig, save_config
from prefer.controls import resolve_controls
from prefer.errors import PreferError
from prefer.evaluation.chat_endpoint import Endpoint
from prefer.evaluation.misalignment import checkpoint_task, load_for_task
from prefer.evaluation.redteam import (
    BEHAVIOURS,
    endpoint_candidate_source,
    load_seeds,
    local_candidate_source,
    plot_redteam,
    run_trial,
    summarize_trials,
    target_prompt_scorer,
)
from prefer.files import atomic_path, write_json_atomic
from prefer.models.build import load_checkpoint
from prefer.scorers import check_available, get_scorer, get_segment_scorer
from prefer.tasks import get_task
from prefer.training import resolve_device


def _candidate_source(config: RedteamConfig, device):
    if config.redteam_model is not None:
        model, tokenizer, _ = load_checkpoint(config.redteam_model, device)
        return local_candidate_source(
            model,
            tokenizer,
            max_new_tokens=config.candidates.max_new_tokens,
            temperature=config.candidates.temperature,
            top_p=config.candidates.top_p,
            batch_size=config.batch_size,
        )
    api_key = None
    if config.endpoint.api_key_env is not None:
        api_key = os.environ.get(config.endpoint.api_key_env)
        if not api_key:
            raise PreferError(
                f"endpoint.api_key_env: the environment variable {config.endpoint.api_key_env} is not set"
            )
    endpoint = Endpoint(
        url=config.endpoint.url,
        model=config.endpoint.model,
        api=config.endpoint.api,
        api_key=api_key,
        timeout=config.endpoint.timeout,
    )
    return endpoint_candidate_source(
        endpoint, max_tokens=config.candidates.max_new_tokens, temperature=config.candidates.temperature
    )


def redteam(config: RedteamConfig) -> dict:
    """Run `config.trials` red-teaming trials against `config.target`; returns what redteam.json holds."""
    device = resolve_device(config.runtime.device)
    # Before any model loads: the task, and the scorer's packages and weights.
    task = get_task(checkpoint_task(config.target, config.task))
    scorer_name = config.scorer or task.eval_scorers[0]
    score_on = config.score_on
    if score_on == "auto":  # code is checked in the context of its `def` line; prose on its own
        score_on = "in_context" if task.name == "pep8" else "continuation"
    check_available(scorer_name, segments=score_on == "in_context")
    scorer = get_segment_scorer(scorer_name) if score_on == "in_context" else get_scorer(scorer_name)
    model, tokenizer, info, _ = load_for_task(config.target, task.name, device)
    conditional = bool(info.get("control_tokens_trained"))
    controls = resolve_controls(prompt="auto", block="auto", conditional=conditional)
    behaviour = config.behaviour or BEHAVIOURS.get(task.name)
    if behaviour is None:
        raise PreferError(f"behaviour: no default for task {task.name!r}; pass behaviour=...")
    seeds = load_seeds(task.name, config.seeds)
    generate = _candidate_source(config, device)
    score_prompts = target_prompt_scorer(
        model,
        tokenizer,
        controls,
        scorer=scorer,
        score_on=score_on,
        continuations=config.continuations.count,
        max_new_tokens=config.continuations.max_new_tokens,
        temperature=config.continuations.temperature,
        top_p=config.continuations.top_p,
        batch_size=config.batch_size,
        keep=config.continuations.keep,
    )

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    trials = []
    for index in range(config.search.trials):
        trial = run_trial(
            seeds=seeds,
            generate=generate,
            score_prompts=score_prompts,
            behaviour=behaviour,
            rounds=config.search.rounds,
            candidates_per_round=config.search.candidates_per_round,
            shots=config.search.shots,
            temperature=config.search.temperature,
            score_scale=config.search.score_scale,
            seed=config.runtime.seed + index,
            progress=config.runtime.progress,
        )
        with atomic_path(out_dir / f"pool_trial{index}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(record) + "\n" for record in trial["pool"]), encoding="utf-8")
        trials.append({"seed": trial["seed"], "curve": trial["curve"], "pool": f"pool_trial{index}.jsonl"})
    results = {
        "target": str(config.target),
        "task": task.name,
        "objective": info.get("objective"),
        "scorer": scorer_name,
        "score_on": score_on,
        "prompt": controls.prompt,
        "blocked": controls.block,
        "behaviour": behaviour,
        "red_team": config.redteam_model or f"{config.endpoint.url} ({config.endpoint.model})",
        "draw": {
            "temperature": config.search.temperature,
            "score_scale": config.search.score_scale,
            "shots": config.search.shots,
        },
        "config": asdict(config),
        "summary": summarize_trials(trials),
        "trials": trials,
    }
    write_json_atomic(out_dir / "redteam.json", results)
    plot_redteam(
        results["summary"],
        out_dir / "redteam.png",
        title=f"red-teaming {'/'.join(Path(config.target).parts[-2:])} ({task.name}, {config.search.trials} trials)",
    )
    return results
