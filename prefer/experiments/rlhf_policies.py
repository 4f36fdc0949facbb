"""`prefer rlhf`, its policies and their evaluation: one protocol (`Evaluator`) for every policy; best-of-n from
one pool of SFT samples; PPO against the weak proxy read as its KL grows; DPO / IPO / listwise DPO on the
rankings; RLOO and GRPO against the reward model."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from prefer import checkpoint_record
from prefer.config import RLHFConfig
from prefer.config.rlhf import parse_dpo_run
from prefer.errors import PreferError
from prefer.evaluation.capability import heldout_loss_per_token_and_byte
from prefer.evaluation.policy import (
    best_of_n_entry,
    kl_to_sft,
    policy_entry,
    sample_policy,
)
from prefer.experiments.rlhf_data import run_stage
from prefer.files import atomic_path, write_json_atomic
from prefer.models.build import load_checkpoint
from prefer.scorers import get_scorer, score_responses
from prefer.stages.dpo import dpo
from prefer.stages.policy_gradient import group_rl, ppo
from prefer.training.preference_batches import OBJECTIVES


class Evaluator:
    """The protocol, with what every policy shares loaded once: prompts, SFT reference, scorers, held-out text."""

    def __init__(
        self,
        config: RLHFConfig,
        out: Path,
        prompts: list[str],
        rm_paths: dict[str, Path],
        gold,
        heldout_texts: list[str],
        device,
        *,
        gold_name: str,
    ):
        self.config, self.out, self.prompts, self.gold, self.device = config, out, prompts, gold, device
        self.heldout_texts = heldout_texts
        scored = {name: path for name, path in rm_paths.items() if name != "rm_noisy"}
        self.proxies = {name: get_scorer(f"rm:{path}") for name, path in scored.items()}
        # What the scores depend on besides the policy: part of every cached evaluation's key, so that a rerun with
        # another gold (e.g. fluency_weight) or retrained reward models does not reuse stale numbers.
        self.judges = {
            "gold": gold_name,
            "proxies": {name: checkpoint_record.read(path).as_dict() for name, path in scored.items()},
        }
        self.reference = None
        self.sft_gold = None

    def set_reference(self, sft_path: Path) -> None:
        self.reference = load_checkpoint(sft_path, self.device)[0]

    def samples(self, model, tokenizer, prompts, per_prompt: int, seed_offset: int = 0):
        protocol = self.config.eval
        return sample_policy(
            model,
            tokenizer,
            prompts,
            samples_per_prompt=per_prompt,
            max_new_tokens=protocol.max_new_tokens,
            temperature=protocol.temperature,
            seed=self.config.runtime.seed + seed_offset,
            batch_size=protocol.batch_size,
            progress=self.config.runtime.progress,
        )

    def scores(self, samples) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        gold = score_responses(self.gold, samples.prompts, samples.responses)
        return gold, {name: score_responses(p, samples.prompts, samples.responses) for name, p in self.proxies.items()}

    def heldout(self, model, tokenizer) -> dict:
        return heldout_loss_per_token_and_byte(
            model, tokenizer, self.heldout_texts, batch_size=32, control_tokens_trained=False
        )

    def evaluate(self, name: str, path: Path, *, is_sft: bool = False) -> dict:
        """Sample the evaluation prompts, score, KL to SFT, win rate against SFT; cached by the model's identity."""
        cache = self.out / "evaluations" / f"{name}.json"
        key = {
            "model": str(path),
            "info": checkpoint_record.read(path).as_dict(),
            "settings": [
                self.config.eval.samples,
                self.config.eval.temperature,
                self.config.eval.max_new_tokens,
                self.config.runtime.seed,
                len(self.prompts),
                self.config.eval.heldout_blocks,
                self.config.eval.batch_size,  # one generator over the batches: the batch size sets the draws
            ],
            "judges": self.judges,
        }
        # The SFT model and the policies draw independent samples (another seed), as two labelers' comparisons of
        # two models' outputs are: the same seed would pair near-identical responses of similar models as ties.
        offset = 0 if is_sft else 1
        key = json.loads(json.dumps({**key, "seed_offset": offset}))
        if cache.exists() and json.loads(cache.read_text())["key"] == key:
            return json.loads(cache.read_text())["entry"]
        model, tokenizer, _ = load_checkpoint(path, self.device)
        samples = self.samples(model, tokenizer, self.prompts, self.config.eval.samples, seed_offset=offset)
        gold, proxies = self.scores(samples)
        kl = (
            np.zeros(len(samples))
            if is_sft
            else kl_to_sft(
                model,
                self.reference,
                tokenizer,
                samples,
                temperature=self.config.eval.temperature,
                batch_size=self.config.eval.batch_size,
            )
        )
        entry = policy_entry(
            samples,
            gold_misalignment=gold,
            proxies=proxies,
            kl=kl,
            baseline_gold_misalignment=None if is_sft else np.asarray(self.sft_gold),
            heldout=self.heldout(model, tokenizer),
        ).as_dict()
        entry["examples"] = [{"prompt": p, "response": r} for p, r in zip(samples.prompts[:4], samples.responses[:4])]
        write_json_atomic(cache, {"key": key, "entry": entry})
        return entry


def headline(entry: dict) -> str:
    gold, win = entry["gold"], entry.get("win_rate")
    text = f"gold {gold['mean']:.3g} [{gold['ci'][0]:.3g}, {gold['ci'][1]:.3g}]"
    if entry.get("kl") is not None:
        text += f", KL {entry['kl']['mean']:.2f}"
    if win:
        text += f", win rate vs SFT {win['win_rate']:.3f} [{win['ci'][0]:.3f}, {win['ci'][1]:.3f}]"
    return text


def best_of_n_curve(
    config: RLHFConfig, evaluator: Evaluator, sft_path: Path, prompts: list[str], sft_entry: dict
) -> dict:
    """Best-of-n against each proxy from one pool of max(n) SFT samples per evaluation prompt."""
    cache = evaluator.out / "evaluations" / "best_of_n.json"
    key = json.loads(
        json.dumps(
            {
                "sft": str(sft_path),
                "info": checkpoint_record.read(sft_path).as_dict(),
                "n": config.best_of_n,
                "prompts": len(prompts),
                "seed": config.runtime.seed,
                "sampling": [config.eval.temperature, config.eval.max_new_tokens, config.eval.batch_size],
                "judges": evaluator.judges,
            }
        )
    )
    if cache.exists() and json.loads(cache.read_text())["key"] == key:
        return json.loads(cache.read_text())["curves"]
    model, tokenizer, _ = load_checkpoint(sft_path, evaluator.device)
    pool = evaluator.samples(model, tokenizer, prompts, max(config.best_of_n), seed_offset=101)
    gold, proxies = evaluator.scores(pool)
    heldout = sft_entry["heldout"]
    baseline = np.asarray(evaluator.sft_gold).reshape(-1, config.eval.samples)[: len(prompts)].ravel()
    curves = {
        name: [
            best_of_n_entry(
                pool,
                n,
                gold_misalignment=gold,
                proxies=proxies,
                select_by=name,
                baseline_gold_misalignment=baseline,
                heldout=heldout,
            ).as_dict()
            for n in sorted(config.best_of_n)
        ]
        for name in proxies
    }
    for entries in curves.values():
        for entry in entries:
            entry.pop("per_sample_gold")
    write_json_atomic(cache, {"key": key, "curves": curves})
    return curves


def overoptimisation_curve(config: RLHFConfig, evaluator: Evaluator, base, out: Path) -> list[dict]:
    """PPO against the weak proxy, evaluated after each of `overopt_points` iterations (or every `overopt_every`).
    One run continues from point to point (a resumed run continues exactly); the policy at each point is kept in
    `ppo_weak_points/NNNN/`, so a later invocation evaluates every point again without rerunning the policy."""
    points = []
    name = "ppo_weak"
    every = config.overopt_every
    points_at = config.overopt_points or range(every, config.overopt_iterations + 1, every)
    for iterations in sorted(set(points_at)):
        kept = out / f"{name}_points" / f"{iterations:04d}"
        if not checkpoint_record.exists(kept):
            settings = replace(
                base,
                out_dir=str(out / name),
                train=replace(base.train, iterations=iterations),
                kl=replace(base.kl, coef=config.overopt_kl_coef),
            )
            final = out / name / "final"
            info = checkpoint_record.read(final).as_dict()
            if info.get("iterations", 0) > iterations:  # a run of other points: its earlier policies are gone
                raise PreferError(
                    f"overopt_points: {out / name} has run {info['iterations']} iterations, past the point "
                    f"{iterations}; remove it (or use another out_dir) to evaluate these points"
                )
            if info.get("iterations") != iterations:
                final = ppo(settings, resume=True)
            with atomic_path(kept) as staging:
                shutil.copytree(final, staging)
        entry = evaluator.evaluate(f"{name}_{iterations:04d}", kept)
        entry.pop("per_sample_gold", None)
        points.append({"iterations": iterations, **entry})
        print(f"[rlhf] {name} after {iterations} iterations: {headline(entry)}")
    return points


def timed_stage(stage, settings) -> tuple[Path, float | None]:
    """run_stage, and the wall seconds of the invocation that finished training it (kept beside it, so a reused
    run reports them; a run resumed after a kill reports its last part only). None for a finished run reused from
    before timings were kept: its time is not known."""
    timing = Path(settings.out_dir) / "timing.json"
    final_dir = Path(settings.out_dir) / "final"
    before = final_dir.stat().st_mtime_ns if final_dir.exists() else None
    started = time.perf_counter()
    final = run_stage(stage, settings)
    stamp = str(final.stat().st_mtime_ns)
    if not timing.exists() or json.loads(timing.read_text())["final"] != stamp:
        trained = before is None or str(before) != stamp
        write_json_atomic(timing, {"seconds": time.perf_counter() - started if trained else None, "final": stamp})
    return final, json.loads(timing.read_text())["seconds"]


def dpo_policies(
    config: RLHFConfig, evaluator: Evaluator, out: Path, sft_path: Path, rankings: dict[int, Path]
) -> dict[str, dict]:
    """DPO / IPO / listwise DPO from the SFT model on the K-way rankings and KTO on the binary labels of the same
    responses (`dpo_runs`; the feedback file lies beside the rankings), and pairwise vs listwise at `ranking_beta`
    on each of `ranking_sizes` (the same labelling prompts ranked with another K)."""
    k = config.label.num_responses
    runs = [(*parse_dpo_run(spec), k) for spec in config.dpo_runs]
    runs += [(loss, config.ranking_beta, size) for size in config.ranking_sizes for loss in ("dpo", "listwise")]
    policies = {}
    for loss, strength, size in runs:
        name = f"{loss}_b{strength:g}" + ("" if size == k else f"_k{size}")
        hyper = {"tau": strength} if loss == "ipo" else {"beta": strength}
        data_field = OBJECTIVES[loss].data_field  # rankings, or the binary feedback beside them
        files = {"rankings": "", "feedback": "", data_field: str(rankings[size].with_name(f"{data_field}.jsonl"))}
        settings = replace(
            config.dpo,
            out_dir=str(out / name),
            data=replace(
                config.dpo.data,
                **files,
                validation_fraction=config.reward.data.validation_fraction,  # the reward models' held-out prompts
            ),
            model=replace(config.dpo.model, init_from=str(sft_path)),
            dpo=replace(config.dpo.dpo, loss=loss, **hyper),
            runtime=replace(config.dpo.runtime, seed=config.runtime.seed, device=config.runtime.device),
        )
        final, seconds = timed_stage(dpo, settings)
        info = checkpoint_record.read(final)
        policies[name] = {
            **evaluator.evaluate(name, final),
            "kind": loss,
            "beta": strength,
            "K": size,
            "train_seconds": seconds,
            # against held-out rankings (KTO's held-out examples have no ranking: its margin is recorded instead)
            "implicit_reward_accuracy": info.get("val_accuracy") if data_field == "rankings" else None,
            "heldout_reward_margin": info.get("val_margin"),
        }
        print(f"[rlhf] {name}: {headline(policies[name])}")
    return policies


def group_policies(config: RLHFConfig, evaluator: Evaluator, out: Path, sft_path: Path, **paths) -> dict[str, dict]:
    """RLOO and GRPO against the reward model at `group.kl.coef`, as many scored episodes per iteration as PPO."""
    policies = {}
    for algorithm in config.group_algorithms:
        name = f"{algorithm}_kl{config.group.kl.coef:g}"
        settings = replace(
            config.group,
            algorithm=algorithm,
            out_dir=str(out / name),
            model=replace(config.group.model, init_from=str(sft_path)),
            prompts=str(paths["prompts"]),
            reward=replace(
                config.group.reward, model=str(paths["reward_model"]), scorer=None, gold_scorer=paths["gold"]
            ),
            runtime=replace(config.group.runtime, seed=config.runtime.seed, device=config.runtime.device),
        )
        final, seconds = timed_stage(group_rl, settings)
        policies[name] = {
            **evaluator.evaluate(name, final),
            "kind": algorithm,
            "kl_coef": config.group.kl.coef,
            "train_seconds": seconds,
        }
        print(f"[rlhf] {name}: {headline(policies[name])}")
    return policies
