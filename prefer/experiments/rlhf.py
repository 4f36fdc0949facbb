"""`prefer rlhf`: InstructGPT on one task, with synthetic labelers, measured the way the papers measure it.

    task corpus -> prompts, split into label / validation / RL / evaluation prompts (disjoint, recorded)
    starting model (init_from, or pretrained here) -> K samples per label prompt ranked by the gold scorer
    -> reward model on all rankings, weak proxy on a fraction of them, a reward model on noisy rankings
    -> SFT on the best of K for each candidate number of epochs; the one the reward model scores best is kept
    -> policies: best-of-n against each proxy (from one pool of SFT samples), PPO at each KL coefficient,
       PPO-ptx at the best of them, PPO against the weak proxy read as its KL grows (over-optimisation),
       DPO / IPO / listwise DPO on the rankings (and on rankings of another K), KTO on binary labels, RLOO and GRPO
    -> with collection_rounds > 1, later rounds: the last PPO policy's samples ranked, a reward model on every
       round's rankings, PPO against it (rlhf_rounds)
    -> one evaluation protocol for every policy (prefer.evaluation.policy) -> results.{json,csv,md} + figures

With `prompt_set: chat` the prompts are IFEval chat prompts instead (topics x instruction types, the evaluation's
from held-out topics; rlhf_data.chat_prompts), rendered once with the starting chat model's template, and the gold
is IFEval's checkers' verdict on each (prompt, response) pair.

Every stage writes its own directory under `out_dir`; a finished stage with the same settings is reused and an
unfinished one resumes, so killing the command and running it again continues where it stopped. The data stages
live in rlhf_data, the policies and their evaluation in rlhf_policies, the tables and figures in rlhf_report.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from prefer.config import RLHFConfig, save_config
from prefer.data.corpora import load_documents, split_by_source
from prefer.experiments.rlhf_data import (
    build_prompts,
    chat_prompts,
    code_prompt,
    entry_prompt,
    reward_models,
    run_stage,
    starting_model,
    synthetic_labels,
    write_prompt_splits,
)
from prefer.experiments.rlhf_policies import (
    Evaluator,
    best_of_n_curve,
    dpo_policies,
    group_policies,
    headline,
    overoptimisation_curve,
    timed_stage,
)
from prefer.experiments.rlhf_report import write_results
from prefer.experiments.rlhf_rounds import later_rounds
from prefer.models.build import load_checkpoint
from prefer.scorers import get_scorer, score_responses
from prefer.stages.policy_gradient import ppo
from prefer.stages.sft import sft
from prefer.tasks import get_task
from prefer.training import resolve_device

__all__ = ["code_prompt", "entry_prompt", "gold_spec", "rlhf", "starting_model"]

# the chat golds as the table names them (the share of the prompt's instructions failed)
GOLD_LABELS = {"ifeval": "IFEval strict", "ifeval-loose": "IFEval loose"}


def gold_spec(config: RLHFConfig, start: Path, *, judge_file: Path | None = None) -> str:
    """The gold scorer's `get_scorer` name: `gold_scorer`, plus the fluency judge's term when it has a weight; on
    the chat prompts, the IFEval judge of the prompts file `judge_file` (`ifeval:FILE`)."""
    if config.prompt_set == "chat":
        return f"{config.gold_scorer}:{judge_file}"
    if config.fluency_weight == 0:
        return config.gold_scorer
    return f"{config.gold_scorer}+{config.fluency_weight:g}*nll:{config.fluency_judge or start}"


def sft_candidates(config: RLHFConfig, out: Path, start: Path, evaluator: Evaluator, validation_prompts: list) -> tuple:
    """SFT on the demonstrations, one run per candidate length (`sft_epochs`); the reward model's mean score of
    samples on the validation prompts picks one (the paper's selection rule). Returns (candidates, the chosen
    epochs, its final directory)."""
    device, gold = evaluator.device, evaluator.gold
    candidates = {}
    rm_scorer = evaluator.proxies["rm"]
    for epochs in config.sft_epochs:
        settings = replace(
            config.sft,
            out_dir=str(out / f"sft_{epochs:g}ep"),
            data=replace(config.sft.data, demonstrations=str(out / "labels" / "demonstrations.jsonl")),
            train=replace(config.sft.train, epochs=epochs),
            model=replace(config.sft.model, init_from=str(start)),
            runtime=replace(config.sft.runtime, seed=config.runtime.seed, device=config.runtime.device),
        )
        path = run_stage(sft, settings)
        model, tokenizer, _ = load_checkpoint(path, device)
        samples = evaluator.samples(model, tokenizer, validation_prompts, 1, seed_offset=17)
        rm_reward = -np.asarray(score_responses(rm_scorer, samples.prompts, samples.responses), dtype=float)
        candidates[f"{epochs:g}"] = {
            "path": str(path),
            "rm_reward": float(rm_reward.mean()),
            "gold": float(np.mean(np.asarray(score_responses(gold, samples.prompts, samples.responses), dtype=float))),
        }
    chosen = max(candidates, key=lambda e: candidates[e]["rm_reward"])
    sft_path = Path(candidates[chosen]["path"])
    print(
        f"[rlhf] SFT: {chosen} epochs chosen by reward-model score on {len(validation_prompts)} validation prompts "
        + str({e: round(c["rm_reward"], 3) for e, c in candidates.items()})
    )
    return candidates, chosen, sft_path


def ppo_policies(
    config: RLHFConfig, evaluator: Evaluator, out: Path, sft_path: Path, prompts: Path, rm_paths, gold_name
):
    """PPO against the reward model at each of `kl_coefs`, then PPO-ptx at the best of them. Returns (the PPO
    settings the other runs share, the policies' entries, the best PPO's name, the PPO-ptx run's name)."""
    source = config.source or get_task(config.task).corpus
    policies: dict[str, dict] = {}
    ppo_base = replace(
        config.ppo,
        model=replace(config.ppo.model, init_from=str(sft_path)),
        prompts=str(prompts),
        reward=replace(config.ppo.reward, model=str(rm_paths["rm"]), scorer=None, gold_scorer=gold_name),
        ptx=replace(config.ppo.ptx, coef=0.0, source=None),
        runtime=replace(config.ppo.runtime, seed=config.runtime.seed, device=config.runtime.device),
    )
    for coef in config.kl_coefs:
        name = f"ppo_kl{coef:g}"
        final, train_seconds = timed_stage(
            ppo, replace(ppo_base, out_dir=str(out / name), kl=replace(ppo_base.kl, coef=coef))
        )
        policies[name] = {
            **evaluator.evaluate(name, final),
            "kind": "ppo",
            "kl_coef": coef,
            "train_seconds": train_seconds,
        }
        print(f"[rlhf] {name}: {headline(policies[name])}")
    ppo_names = [f"ppo_kl{c:g}" for c in config.kl_coefs]
    best = min(ppo_names, key=lambda n: policies[n]["gold"]["mean"])
    ptx_name = f"{best}_ptx"
    final, train_seconds = timed_stage(
        ppo,
        replace(
            ppo_base,
            out_dir=str(out / ptx_name),
            kl=replace(ppo_base.kl, coef=policies[best]["kl_coef"]),
            ptx=replace(ppo_base.ptx, coef=config.ptx_coef, source=source),
        ),
    )
    policies[ptx_name] = {
        **evaluator.evaluate(ptx_name, final),
        "kind": "ppo_ptx",
        "kl_coef": policies[best]["kl_coef"],
        "ptx_coef": config.ptx_coef,
        "train_seconds": train_seconds,
    }
    print(f"[rlhf] {ptx_name}: {headline(policies[ptx_name])}")
    return ppo_base, policies, best, ptx_name


def prompt_splits(config: RLHFConfig, out: Path) -> tuple[dict[str, list[str]], Path | None]:
    """The prompts of each split and, on the chat prompts, the IFEval judge's prompts file (None otherwise)."""
    if config.prompt_set == "chat":  # rendered with the starting model's chat template: it is resolved first
        return chat_prompts(config, starting_model(config, out), out)
    get_scorer(config.gold_scorer)  # an unknown scorer stops here, before any work
    return build_prompts(config), None


def protocol_settings(config: RLHFConfig, eval_prompts: int) -> dict:
    """What the results table's caption states about the protocol (names of results.json, kept as they were)."""
    return {
        "label_max_new_tokens": config.label.generation.max_new_tokens,
        "K": config.label.num_responses,
        "eval_samples": config.eval.samples,
        "eval_temperature": config.eval.temperature,
        "eval_max_new_tokens": config.eval.max_new_tokens,
        "eval_prompts": eval_prompts,
        "ppo_iterations": config.ppo.train.iterations,
        "ppo_batch_size": config.ppo.train.batch_size,
    }


def rlhf(config: RLHFConfig) -> dict:
    started = time.perf_counter()
    task = get_task(config.task)
    out = Path(config.out_dir)
    device = resolve_device(config.runtime.device)
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        seconds[name] = time.perf_counter() - since
        return time.perf_counter()

    t = time.perf_counter()
    splits, judge_file = prompt_splits(config, out)
    save_config(config, out / "rlhf.yaml")
    paths = write_prompt_splits(splits, out)
    say = print
    name = "chat" if config.prompt_set == "chat" else task.name
    say(f"[rlhf] {name}: prompts " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    start = starting_model(config, out)
    t = lap("start_model", t)
    gold_name = gold_spec(config, start, judge_file=judge_file)
    gold = get_scorer(gold_name)
    labels = synthetic_labels(config, out, start, paths["label"], gold=gold_name)
    say(
        f"[rlhf] labels: {labels['comparisons']} rankings of K = {config.label.num_responses}; gold mean "
        f"{labels['gold_mean']:.3g}, best of K {labels['gold_best_mean']:.3g}"
    )
    t = lap("labels", t)
    rm_paths, rm_info = reward_models(config, out, start, gold)
    say(
        "[rlhf] reward models, held-out accuracy against the gold ranking: "
        + ", ".join(
            f"{k} {v['heldout_gold_accuracy']:.3f}"
            for k, v in rm_info.items()
            if isinstance(v, dict) and "heldout_gold_accuracy" in v
        )
    )
    t = lap("reward_models", t)

    source = config.source or task.corpus
    documents, _ = load_documents(source)
    _, validation = split_by_source(documents, validation_fraction=0.05)
    heldout_texts = ["".join(d.segments) for d in validation[: config.eval.heldout_blocks]]
    evaluator = Evaluator(config, out, splits["eval"], rm_paths, gold, heldout_texts, device, gold_name=gold_name)

    # SFT: one run per candidate length; the reward model's mean score on the validation prompts picks one.
    candidates, chosen, sft_path = sft_candidates(config, out, start, evaluator, splits["validation"])
    t = lap("sft", t)

    evaluator.set_reference(sft_path)
    policies: dict[str, dict] = {}
    sft_entry = evaluator.evaluate("sft", sft_path, is_sft=True)
    evaluator.sft_gold = sft_entry["per_sample_gold"]
    policies["sft"] = {**sft_entry, "kind": "sft"}
    start_entry = evaluator.evaluate("pretrained", start)
    policies["pretrained"] = {**start_entry, "kind": "pretrained"}
    t = lap("evaluate_sft", t)

    best_of_n = best_of_n_curve(config, evaluator, sft_path, splits["eval"][: config.best_of_n_prompts], sft_entry)
    t = lap("best_of_n", t)

    ppo_base, ppo_runs, best, ptx_name = ppo_policies(
        config, evaluator, out, sft_path, paths["rl"], rm_paths, gold_name
    )
    policies |= ppo_runs
    t = lap("ppo", t)

    overopt = overoptimisation_curve(
        config, evaluator, replace(ppo_base, reward=replace(ppo_base.reward, model=str(rm_paths["rm_weak"]))), out
    )
    t = lap("overoptimisation", t)

    rankings = {config.label.num_responses: out / "labels" / "rankings.jsonl"}
    for size in config.ranking_sizes:
        extra = synthetic_labels(config, out, start, paths["label"], gold=gold_name, num_responses=size)
        say(f"[rlhf] labels, K = {size}: {extra['comparisons']} rankings of the same prompts")
        rankings[size] = out / f"labels_k{size}" / "rankings.jsonl"
    policies |= dpo_policies(config, evaluator, out, sft_path, rankings)
    t = lap("dpo", t)
    policies |= group_policies(
        config, evaluator, out, sft_path, prompts=paths["rl"], reward_model=rm_paths["rm"], gold=gold_name
    )
    t = lap("group_rl", t)
    rounds = []
    if config.collection_rounds > 1:
        round_policies, rounds = later_rounds(
            config,
            evaluator,
            out,
            start=start,
            label_prompts=paths["label"],
            gold_name=gold_name,
            ppo_base=ppo_base,
            first_policy=best,
            kl_coef=policies[best]["kl_coef"],
            first_reward_model=rm_paths["rm"],
        )
        policies |= round_policies
        lap("collection_rounds", t)
    seconds["total"] = time.perf_counter() - started

    results = {
        "task": task.name,
        "prompt_set": config.prompt_set,
        "gold_scorer": config.gold_scorer,
        "gold": gold_name,
        "gold_label": GOLD_LABELS.get(config.gold_scorer, config.gold_scorer)
        + (f" + {config.fluency_weight:g} x judge NLL/token" if config.fluency_weight else ""),
        "fluency_weight": config.fluency_weight,
        "source": source,
        "splits": {k: len(v) for k, v in splits.items()},
        "start_model": str(start),
        "labels": labels,
        "reward_models": rm_info,
        "sft_candidates": candidates,
        "sft_chosen_epochs": chosen,
        "policies": policies,
        "best_ppo": best,
        "ptx": ptx_name,
        "best_of_n": best_of_n,
        "overoptimisation": overopt,
        "rounds": rounds,
        "seconds": seconds,
        "settings": protocol_settings(config, len(splits["eval"])),
    }
    text = write_results(results, out)
    print(text)
    print(
        f"[rlhf] {seconds['total'] / 60:.1f} min; results in {out}/ (results.md, results.csv, results.json, "
        "overoptimisation.png, win_rate.png, alignment_tax.png)"
    )
    return results
