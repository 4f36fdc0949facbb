"""`prefer rlhf`: InstructGPT on one task, with synthetic labelers, measured the way the papers measure it.

    task corpus -> prompts, split into label / validation / RL / evaluation prompts (disjoint, recorded)
    starting model (init_from, or pretrained here) -> K samples per label prompt ranked by the gold scorer
    -> reward model on all rankings, weak proxy on a fraction of them, a reward model on noisy rankings
    -> SFT on the best of K for each candidate number of epochs; the one the reward model scores best is kept
    -> policies: best-of-n against each proxy (from one pool of SFT samples), PPO at each KL coefficient,
       PPO-ptx at the best of them, PPO against the weak proxy read as its KL grows (over-optimisation)
    -> one evaluation protocol for every policy (prefer.evaluation.policy) -> results.{json,csv,md} + figures

Every stage writes its own directory under `out_dir`; a finished stage with the same settings is reused and an
unfinished one resumes, so killing the command and running it again continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from prefer.config import RLHFConfig, save_config
from prefer.data.corpora import load_documents, split_by_source
from prefer.data.formats import (
    Comparison,
    read_rankings,
    split_validation,
    write_rankings,
)
from prefer.errors import PreferError
from prefer.evaluation.capability import heldout_loss_per_token_and_byte
from prefer.evaluation.policy import (
    best_of_n_entry,
    kl_to_sft,
    policy_entry,
    sample_policy,
    score_responses,
)
from prefer.evaluation.preference import noise_for_agreement, pairwise_accuracy
from prefer.experiments.rlhf_report import write_results
from prefer.files import write_json_atomic, write_text_atomic
from prefer.labeling.synthetic import label_synthetic, rank_by_scores
from prefer.models.build import load_checkpoint
from prefer.models.reward_model import load_reward_model
from prefer.scorers import get_scorer
from prefer.stages.ppo import ppo
from prefer.stages.pretrain import pretrain
from prefer.stages.reward import reward
from prefer.stages.sft import sft
from prefer.tasks import get_task
from prefer.training import resolve_device

SPLITS = ("eval", "validation", "rl", "label")  # drawn in this order: the evaluation prompts do not move when
# the number of labelling prompts changes


# ------------------------------------------------------------------ prompts


def entry_prompt(segments, *, lines: int, max_chars: int) -> str | None:
    """A document's opening as a prompt: its first line plus `lines` more non-blank lines (blank lines between them
    kept), with the final newline cut. The model then starts its response on the seam it saw in training: a prompt
    ending in a lone newline tokenizes unlike any training text (there the newline merges with what follows), and a
    pretrained changelog model answers it with an immediate end of text in ~half of its samples (measured)."""
    taken, seen = [], 0
    for segment in segments:
        taken.append(segment)
        if segment.strip():
            seen += 1
            if seen == lines + 1:
                break
    if seen < lines + 1:
        return None
    prompt = "".join(taken).rstrip("\n")
    return prompt if 0 < len(prompt) <= max_chars else None


def code_prompt(text: str, *, max_chars: int) -> list[str]:
    """Top-level function signatures of a module ("def f(x):", the newline cut as in `entry_prompt`)."""
    from prefer.evaluation.capability import function_prompts

    return [p.rstrip("\n") for p in function_prompts([text]) if len(p) <= max_chars]


def build_prompts(config: RLHFConfig) -> dict[str, list[str]]:
    """Distinct prompts of the task's corpus, shuffled with the seed and split; PreferError if there are too few."""
    task = get_task(config.task)
    source = config.source or task.corpus
    documents, _ = load_documents(source)
    found: set[str] = set()
    for document in documents:
        if task.name == "pep8":
            found.update(code_prompt("".join(document.segments), max_chars=config.max_prompt_chars))
        else:
            prompt = entry_prompt(document.segments, lines=config.prompt_lines, max_chars=config.max_prompt_chars)
            if prompt is not None:
                found.add(prompt)
    prompts = sorted(found)
    np.random.default_rng(config.seed).shuffle(prompts)
    sizes = {name: getattr(config, f"{name}_prompts") for name in SPLITS}
    if len(prompts) < sum(sizes.values()):
        raise PreferError(
            f"prompts: the corpus {source!r} gives {len(prompts)} distinct prompts of at most "
            f"{config.max_prompt_chars} characters; the splits need {sum(sizes.values())} "
            f"({', '.join(f'{k}_prompts={v}' for k, v in sizes.items())})"
        )
    splits, start = {}, 0
    for name in SPLITS:
        splits[name] = prompts[start : start + sizes[name]]
        start += sizes[name]
    return splits


def write_prompt_splits(splits: dict[str, list[str]], out: Path) -> dict[str, Path]:
    paths = {}
    for name, prompts in splits.items():
        paths[name] = out / "prompts" / f"{name}.jsonl"
        write_text_atomic(paths[name], "".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    write_json_atomic(out / "prompts" / "splits.json", {name: len(p) for name, p in splits.items()})
    return paths


# ------------------------------------------------------------------ stages, cached


def _same_config(run_dir: Path, config) -> bool:
    """A finished run of the same config (saved config.yaml) is reused as it is."""
    from prefer.config import load_config

    saved = run_dir / "config.yaml"
    if not (run_dir / "final").exists() or not saved.exists():
        return False
    try:
        return asdict(load_config(type(config), yaml_path=saved)) == json.loads(json.dumps(asdict(config)))
    except PreferError:  # written by another version of the config: not the same run
        return False


def run_stage(stage, config) -> Path:
    run_dir = Path(config.out_dir)
    if _same_config(run_dir, config):
        return run_dir / "final"
    return stage(config, resume=True)


def starting_model(config: RLHFConfig, out: Path) -> Path:
    if config.init_from is not None:
        if not (Path(config.init_from) / "config.json").exists():
            raise PreferError(f"init_from: {config.init_from} is not a Hugging Face model directory (no config.json)")
        return Path(config.init_from)
    data = replace(config.pretrain.data, task=config.task, source=config.source)
    return run_stage(
        pretrain,
        replace(
            config.pretrain,
            out_dir=str(out / "pretrain"),
            data=data,
            runtime=replace(config.pretrain.runtime, device=config.device),
        ),
    )


def synthetic_labels(config: RLHFConfig, out: Path, model: Path, prompts: Path) -> dict:
    """Rankings and best-of-K demonstrations by the gold scorer (cached by their settings)."""
    label = replace(
        config.label,
        model=str(model),
        prompts=str(prompts),
        scorer=config.gold_scorer,
        rankings_out=str(out / "labels" / "rankings.jsonl"),
        demonstrations_out=str(out / "labels" / "demonstrations.jsonl"),
        device=config.device,
    )
    key_path = out / "labels" / "label.json"
    key = json.loads(json.dumps(asdict(label)))
    if key_path.exists() and json.loads(key_path.read_text())["config"] == key:
        return json.loads(key_path.read_text())["report"]
    report = label_synthetic(label, progress=config.ppo.runtime.progress)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(report).items()}
    write_json_atomic(key_path, {"config": key, "report": summary})
    return summary


def noisy_rankings(config: RLHFConfig, comparisons: list[Comparison], gold, path: Path) -> dict:
    """The same responses re-ranked by labelers who see the gold scores through Gaussian noise, its std set so
    that two such labelers agree on `label_agreement` of the non-tied pairs (labeler_agreement)."""
    scores = [score_responses(gold, [c.prompt] * len(c.responses), list(c.responses)) for c in comparisons]
    differences = [s[i] - s[j] for s in scores for i in range(len(s)) for j in range(i + 1, len(s))]
    sigma = noise_for_agreement(differences, config.label_agreement)
    rng = np.random.default_rng(config.seed + 1)
    noisy = [
        Comparison(c.prompt, c.responses, rank_by_scores(s + rng.normal(0.0, sigma, len(s))))
        for c, s in zip(comparisons, scores)
    ]
    write_rankings(path, noisy)
    return {
        "sigma": sigma,
        "agreement": config.label_agreement,
        "agreement_with_gold": float(np.mean([_agree(c.ranks, n.ranks) for c, n in zip(comparisons, noisy)])),
    }


def _agree(gold_ranks, noisy_ranks) -> float:
    """Share of a prompt's gold-ordered pairs that the noisy ranking orders the same way."""
    g, n = np.asarray(gold_ranks), np.asarray(noisy_ranks)
    pairs = g[:, None] < g[None, :]
    return float((pairs & (n[:, None] < n[None, :])).sum() / max(1, pairs.sum()))


def reward_models(config: RLHFConfig, out: Path, model: Path, gold) -> tuple[dict[str, Path], dict]:
    """The reward model (all rankings), the weak proxy (`weak_fraction` of the training prompts) and, with
    `label_agreement`, one on noisy rankings; each one's pairwise accuracy against the GOLD ranking of the same
    held-out prompts, none of which any of them trained on."""
    rankings_path = out / "labels" / "rankings.jsonl"
    comparisons = read_rankings(rankings_path)
    train_index, val_index = split_validation(len(comparisons), config.reward.data.validation_fraction, config.seed)
    files = {"rm": rankings_path}
    weak = [comparisons[i] for i in train_index[: max(2, round(config.weak_fraction * len(train_index)))]]
    files["rm_weak"] = out / "labels" / f"rankings_weak_{len(weak)}.jsonl"  # its size in the name: a stage's cache
    # key is its config, and a different subset is a different run
    write_rankings(files["rm_weak"], weak)
    info: dict = {"rankings": len(comparisons), "heldout_rankings": len(val_index), "weak_rankings": len(weak)}
    if config.label_agreement is not None:
        files["rm_noisy"] = out / "labels" / "rankings_noisy.jsonl"
        info["noise"] = noisy_rankings(config, comparisons, gold, files["rm_noisy"])
    paths = {}
    for name, rankings in files.items():
        # The weak proxy holds out nothing of its own: the shared held-out prompts measure it.
        fraction = 0.0 if name == "rm_weak" else config.reward.data.validation_fraction
        settings = replace(
            config.reward,
            out_dir=str(out / name),
            data=replace(config.reward.data, rankings=str(rankings), demonstrations=None, validation_fraction=fraction),
            model=replace(config.reward.model, init_from=str(model)),
            runtime=replace(config.reward.runtime, seed=config.seed, device=config.device),
        )
        paths[name] = run_stage(reward, settings)
    heldout = [comparisons[i] for i in val_index]
    for name, path in paths.items():
        scorer = load_reward_model(path)
        rewards = [scorer.rewards([(c.prompt, r) for r in c.responses]).tolist() for c in heldout]
        accuracy, pairs = pairwise_accuracy(rewards, [c.ranks for c in heldout])
        info[name] = {"heldout_gold_accuracy": accuracy, "heldout_pairs": pairs}
    return paths, info


# ------------------------------------------------------------------ evaluation of one policy


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
    ):
        self.config, self.out, self.prompts, self.gold, self.device = config, out, prompts, gold, device
        self.heldout_texts = heldout_texts
        self.proxies = {name: get_scorer(f"rm:{path}") for name, path in rm_paths.items() if name != "rm_noisy"}
        self.reference = None
        self.sft_gold = None

    def set_reference(self, sft_path: Path) -> None:
        self.reference = load_checkpoint(sft_path, self.device)[0]

    def samples(self, model, tokenizer, prompts, per_prompt: int, seed_offset: int = 0):
        label = self.config.label
        return sample_policy(
            model,
            tokenizer,
            prompts,
            samples_per_prompt=per_prompt,
            max_new_tokens=label.generation.max_new_tokens,
            temperature=self.config.eval_temperature,
            seed=self.config.seed + seed_offset,
            batch_size=label.batch_size,
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
            "info": json.loads((path / "prefer.json").read_text()),
            "settings": [
                self.config.eval_samples,
                self.config.eval_temperature,
                self.config.label.generation.max_new_tokens,
                self.config.seed,
                len(self.prompts),
                self.config.heldout_blocks,
            ],
        }
        # The SFT model and the policies draw independent samples (another seed), as two labelers' comparisons of
        # two models' outputs are: the same seed would pair near-identical responses of similar models as ties.
        offset = 0 if is_sft else 1
        key = json.loads(json.dumps({**key, "seed_offset": offset}))
        if cache.exists() and json.loads(cache.read_text())["key"] == key:
            return json.loads(cache.read_text())["entry"]
        model, tokenizer, _ = load_checkpoint(path, self.device)
        samples = self.samples(model, tokenizer, self.prompts, self.config.eval_samples, seed_offset=offset)
        gold, proxies = self.scores(samples)
        kl = (
            np.zeros(len(samples))
            if is_sft
            else kl_to_sft(
                model,
                self.reference,
                tokenizer,
                samples,
                temperature=self.config.eval_temperature,
                batch_size=self.config.label.batch_size,
            )
        )
        entry = policy_entry(
            samples,
            gold=gold,
            proxies=proxies,
            kl=kl,
            baseline_gold=None if is_sft else np.asarray(self.sft_gold),
            heldout=self.heldout(model, tokenizer),
        )
        entry["examples"] = [{"prompt": p, "response": r} for p, r in zip(samples.prompts[:4], samples.responses[:4])]
        write_json_atomic(cache, {"key": key, "entry": entry})
        return entry


# ------------------------------------------------------------------ the command


def rlhf(config: RLHFConfig) -> dict:
    started = time.perf_counter()
    task = get_task(config.task)
    out = Path(config.out_dir)
    device = resolve_device(config.device)
    gold = get_scorer(config.gold_scorer)  # an unknown scorer stops here, before any work
    splits = build_prompts(config)
    save_config(config, out / "rlhf.yaml")
    paths = write_prompt_splits(splits, out)
    say = print
    say(f"[rlhf] {task.name}: prompts " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        seconds[name] = time.perf_counter() - since
        return time.perf_counter()

    t = time.perf_counter()
    start = starting_model(config, out)
    t = lap("start_model", t)
    labels = synthetic_labels(config, out, start, paths["label"])
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
    heldout_texts = ["".join(d.segments) for d in validation[: config.heldout_blocks]]
    evaluator = Evaluator(config, out, splits["eval"], rm_paths, gold, heldout_texts, device)

    # SFT: one run per candidate length; the reward model's mean score on the validation prompts picks one.
    candidates = {}
    rm_scorer = evaluator.proxies["rm"]
    for epochs in config.sft_epochs:
        settings = replace(
            config.sft,
            out_dir=str(out / f"sft_{epochs:g}ep"),
            data=replace(config.sft.data, demonstrations=str(out / "labels" / "demonstrations.jsonl")),
            train=replace(config.sft.train, epochs=epochs),
            model=replace(config.sft.model, init_from=str(start)),
            runtime=replace(config.sft.runtime, seed=config.seed, device=config.device),
        )
        path = run_stage(sft, settings)
        model, tokenizer, _ = load_checkpoint(path, device)
        samples = evaluator.samples(model, tokenizer, splits["validation"], 1, seed_offset=17)
        rm_reward = -score_responses(rm_scorer, samples.prompts, samples.responses)
        candidates[f"{epochs:g}"] = {
            "path": str(path),
            "rm_reward": float(rm_reward.mean()),
            "gold": float(score_responses(gold, samples.prompts, samples.responses).mean()),
        }
    chosen = max(candidates, key=lambda e: candidates[e]["rm_reward"])
    sft_path = Path(candidates[chosen]["path"])
    say(
        f"[rlhf] SFT: {chosen} epochs chosen by reward-model score on {len(splits['validation'])} validation prompts "
        + str({e: round(c["rm_reward"], 3) for e, c in candidates.items()})
    )
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

    ppo_base = replace(
        config.ppo,
        init_from=str(sft_path),
        prompts=str(paths["rl"]),
        reward=replace(config.ppo.reward, model=str(rm_paths["rm"]), scorer=None, gold_scorer=config.gold_scorer),
        ptx=replace(config.ppo.ptx, coef=0.0, source=None),
        runtime=replace(config.ppo.runtime, seed=config.seed, device=config.device),
    )
    for coef in config.kl_coefs:
        name = f"ppo_kl{coef:g}"
        final = run_stage(ppo, replace(ppo_base, out_dir=str(out / name), kl=replace(ppo_base.kl, coef=coef)))
        policies[name] = {**evaluator.evaluate(name, final), "kind": "ppo", "kl_coef": coef}
        say(f"[rlhf] {name}: {headline(policies[name])}")
    ppo_names = [f"ppo_kl{c:g}" for c in config.kl_coefs]
    best = min(ppo_names, key=lambda n: policies[n]["gold"]["mean"])
    ptx_name = f"{best}_ptx"
    final = run_stage(
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
    }
    say(f"[rlhf] {ptx_name}: {headline(policies[ptx_name])}")
    t = lap("ppo", t)

    overopt = overoptimisation_curve(
        config, evaluator, replace(ppo_base, reward=replace(ppo_base.reward, model=str(rm_paths["rm_weak"]))), out
    )
    lap("overoptimisation", t)
    seconds["total"] = time.perf_counter() - started

    results = {
        "task": task.name,
        "gold_scorer": config.gold_scorer,
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
        "seconds": seconds,
        "settings": {
            "label_max_new_tokens": config.label.generation.max_new_tokens,
            "K": config.label.num_responses,
            "eval_samples": config.eval_samples,
            "eval_temperature": config.eval_temperature,
            "eval_prompts": len(splits["eval"]),
            "ppo_iterations": config.ppo.train.iterations,
            "ppo_batch_size": config.ppo.train.batch_size,
        },
    }
    text = write_results(results, out)
    print(text)
    print(
        f"[rlhf] {seconds['total'] / 60:.1f} min; results in {out}/ (results.md, results.csv, results.json, "
        "overoptimisation.png, win_rate.png, alignment_tax.png)"
    )
    return results


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
                "info": json.loads((sft_path / "prefer.json").read_text()),
                "n": config.best_of_n,
                "prompts": len(prompts),
                "seed": config.seed,
                "proxies": sorted(evaluator.proxies),
            }
        )
    )
    if cache.exists() and json.loads(cache.read_text())["key"] == key:
        return json.loads(cache.read_text())["curves"]
    model, tokenizer, _ = load_checkpoint(sft_path, evaluator.device)
    pool = evaluator.samples(model, tokenizer, prompts, max(config.best_of_n), seed_offset=101)
    gold, proxies = evaluator.scores(pool)
    heldout = sft_entry["heldout"]
    baseline = np.asarray(evaluator.sft_gold).reshape(-1, config.eval_samples)[: len(prompts)].ravel()
    curves = {
        name: [
            best_of_n_entry(
                pool, n, gold=gold, proxies=proxies, select_by=name, baseline_gold=baseline, heldout=heldout
            )
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
    """PPO against the weak proxy, evaluated every `overopt_every` iterations (a resumed run continues exactly)."""
    points = []
    name = "ppo_weak"
    for iterations in range(config.overopt_every, config.overopt_iterations + 1, config.overopt_every):
        settings = replace(
            base,
            out_dir=str(out / name),
            train=replace(base.train, iterations=iterations),
            kl=replace(base.kl, coef=config.overopt_kl_coef),
        )
        final = out / name / "final"
        info = json.loads((final / "prefer.json").read_text()) if (final / "prefer.json").exists() else {}
        if info.get("iterations") != iterations:
            final = ppo(settings, resume=True)
        entry = evaluator.evaluate(f"{name}_{iterations:04d}", final)
        entry.pop("per_sample_gold", None)
        points.append({"iterations": iterations, **entry})
        print(f"[rlhf] {name} after {iterations} iterations: {headline(entry)}")
    return points
