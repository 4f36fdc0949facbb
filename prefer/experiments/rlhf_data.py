"""`prefer rlhf`, its data: prompts from the task's corpus and their splits, the starting model, the synthetic
labelers' rankings and demonstrations (clean and noisy), and the reward models trained on them. Each stage is
cached by its settings under the run directory (`run_stage`)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from prefer.config import RLHFConfig
from prefer.data.corpora import load_documents
from prefer.data.formats import Comparison, read_rankings, write_rankings
from prefer.data.splits import split_validation
from prefer.errors import PreferError
from prefer.evaluation.preference import noise_for_agreement, pairwise_accuracy
from prefer.files import write_json_atomic, write_text_atomic
from prefer.labeling.synthetic import NothingRanked, label_synthetic, rank_by_scores
from prefer.models.build import check_model_dir
from prefer.models.reward_model import load_reward_model
from prefer.models.sources import resolve_model_path
from prefer.scorers import score_responses
from prefer.stages.pretrain import pretrain
from prefer.stages.reward import reward
from prefer.tasks import get_task

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
    np.random.default_rng(config.runtime.seed).shuffle(prompts)
    keys = {name: "eval.prompts" if name == "eval" else f"{name}_prompts" for name in SPLITS}
    sizes = {name: config.eval.prompts if name == "eval" else getattr(config, key) for name, key in keys.items()}
    if len(prompts) < sum(sizes.values()):
        raise PreferError(
            f"prompts: the corpus {source!r} gives {len(prompts)} distinct prompts of at most "
            f"{config.max_prompt_chars} characters; the splits need {sum(sizes.values())} "
            f"({', '.join(f'{keys[k]}={v}' for k, v in sizes.items())})"
        )
    splits, start = {}, 0
    for name in SPLITS:
        splits[name] = prompts[start : start + sizes[name]]
        start += sizes[name]
    return splits


def chat_prompts(config: RLHFConfig, start: Path, out: Path) -> tuple[dict[str, list[str]], Path]:
    """The chat prompt set (`prompt_set: chat`): IFEval prompts of the training topics (and types), shuffled with the
    seed and split into label / validation / RL prompts, and of the held-out topics (every type) for evaluation; each
    user turn rendered once with the starting model's chat template and its generation prompt. Every stage reads
    that text as a plain prompt (document start + its tokens; prefer.encoding.encode_prompt): the labelers, SFT, the
    reward models, DPO, PPO and the evaluation prompt the model with the same ids. Also writes the judge's file
    (prompts/instructions.jsonl: each chosen prompt with its instructions, the gold's `ifeval:` argument).
    Returns (splits of rendered prompts, that file); PreferError if the topics give too few prompts."""
    from prefer.config.chat import TOPICS
    from prefer.encoding import has_chat_template, render_generation_prompt
    from prefer.models.build import load_tokenizer
    from prefer.scorers.instructions import instruction_prompts, write_prompts

    chat, seed = config.chat, config.runtime.seed
    trained_types = [t for t in chat.instruction_types if t not in chat.heldout_types]
    heldout_topics = TOPICS[chat.train_topics : chat.train_topics + chat.heldout_topics]
    pools = {
        "eval": instruction_prompts(heldout_topics, chat.instruction_types, seed=seed + 1),
        "train": instruction_prompts(TOPICS[: chat.train_topics], trained_types, seed=seed),
    }
    for pool in pools.values():
        np.random.default_rng(seed).shuffle(pool)
    sizes = {name: config.eval.prompts if name == "eval" else getattr(config, f"{name}_prompts") for name in SPLITS}
    needed = {"eval": sizes["eval"], "train": sum(sizes.values()) - sizes["eval"]}
    for pool, count in needed.items():
        if len(pools[pool]) < count:
            keys = "eval.prompts" if pool == "eval" else "label_prompts + validation_prompts + rl_prompts"
            raise PreferError(
                f"chat: the {pool} topics give {len(pools[pool])} prompts (topics x instruction types); {keys} "
                f"need {count}: use more chat.{'heldout' if pool == 'eval' else 'train'}_topics or fewer prompts"
            )
    chosen, taken = {"eval": pools["eval"][: sizes["eval"]]}, 0
    for name in SPLITS[1:]:
        chosen[name] = pools["train"][taken : taken + sizes[name]]
        taken += sizes[name]
    tokenizer = load_tokenizer(start, field="init_from")
    if not has_chat_template(tokenizer):
        raise PreferError(f"init_from: {config.init_from} has no chat template; the chat prompts need one")
    judge = out / "prompts" / "instructions.jsonl"
    write_prompts([p for name in SPLITS for p in chosen[name]], judge)
    rendered = {
        name: [render_generation_prompt(tokenizer, p.as_json()["messages"]) for p in prompts]
        for name, prompts in chosen.items()
    }
    return rendered, judge


def write_prompt_splits(splits: dict[str, list[str]], out: Path) -> dict[str, Path]:
    paths = {}
    for name, prompts in splits.items():
        paths[name] = out / "prompts" / f"{name}.jsonl"
        write_text_atomic(paths[name], "".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    write_json_atomic(out / "prompts" / "splits.json", {name: len(p) for name, p in splits.items()})
    return paths


# ------------------------------------------------------------------ stages, cached


REQUEST = "requested_config.json"  # the config a finished stage was asked to run, as this command built it


def _same_config(run_dir: Path, config) -> bool:
    """A finished run of the same config is reused as it is. A stage may save a resolved config (pretraining fills
    in its task's objective defaults), so the request this command made is kept beside it and compared first."""
    from prefer.config import load_config

    requested = json.loads(json.dumps(asdict(config)))
    if not (run_dir / "final").exists():
        return False
    if (run_dir / REQUEST).exists():
        return json.loads((run_dir / REQUEST).read_text()) == requested
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return False
    try:
        return asdict(load_config(type(config), yaml_path=saved)) == requested
    except PreferError:  # written by another version of the config: not the same run
        return False


def run_stage(stage, config) -> Path:
    run_dir = Path(config.out_dir)
    if _same_config(run_dir, config):
        return run_dir / "final"
    final = stage(config, resume=True)
    write_json_atomic(run_dir / REQUEST, json.loads(json.dumps(asdict(config))))
    return final


def starting_model(config: RLHFConfig, out: Path) -> Path:
    if config.init_from is not None:
        check_model_dir(config.init_from, field="init_from")  # a directory, or a named source (converted once)
        return resolve_model_path(config.init_from)
    data = replace(config.pretrain.data, task=config.task, source=config.source)
    return run_stage(
        pretrain,
        replace(
            config.pretrain,
            out_dir=str(out / "pretrain"),
            data=data,
            runtime=replace(config.pretrain.runtime, device=config.runtime.device),
        ),
    )


def synthetic_labels(
    config: RLHFConfig,
    out: Path,
    model: Path,
    prompts: Path,
    *,
    gold: str,
    num_responses: int | None = None,
    folder: Path | None = None,
) -> dict:
    """Rankings, best-of-K demonstrations and binary feedback (prefer.labeling.synthetic.binary_labels: KTO's data)
    by the gold scorer `gold` (a `get_scorer` name) of `model`'s responses, in `folder` (default `labels/`, or
    `labels_k{K}/` for another K than the config's, on the same prompts); cached by their settings."""
    size = num_responses or config.label.num_responses
    if folder is None:
        folder = out / ("labels" if size == config.label.num_responses else f"labels_k{size}")
    label = replace(
        config.label,
        model=str(model),
        prompts=str(prompts),
        scorer=gold,
        num_responses=size,
        rankings_out=str(folder / "rankings.jsonl"),
        demonstrations_out=str(folder / "demonstrations.jsonl"),
        runtime=replace(config.label.runtime, device=config.runtime.device),
    )
    key_path = folder / "label.json"
    key = json.loads(json.dumps(asdict(label)))
    feedback = folder / "feedback.jsonl"
    if key_path.exists() and json.loads(key_path.read_text())["config"] == key and feedback.exists():
        return json.loads(key_path.read_text())["report"]
    try:
        report = label_synthetic(label, progress=label.runtime.progress, feedback_out=feedback)
    except NothingRanked as error:
        raise PreferError(
            f"gold_scorer: {gold} ties every response of every labelling prompt ({error}); {_SEPARATE}"
        ) from None
    check_labels_separate(report, gold=gold, validation_fraction=config.reward.data.validation_fraction)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(report).items()}
    write_json_atomic(key_path, {"config": key, "report": summary})
    return summary


def check_labels_separate(report, *, gold: str, validation_fraction: float) -> None:
    """Right after labelling, before any reward model trains: the gold must separate enough responses for the
    reward models' held-out split to hold a ranking (a gold that ties every response of a prompt leaves no
    preference to learn; its prompts are dropped). PreferError naming the keys to change otherwise."""
    held_out = min(report.comparisons - 1, round(validation_fraction * report.comparisons))  # split_validation's
    if report.comparisons >= 2 and held_out >= 1:
        return
    raise PreferError(
        f"gold_scorer: {gold} ranked {report.prompts} labelling prompts and tied every response of "
        f"{report.dropped_all_tied} of them, leaving {report.comparisons} rankings ({held_out} held out at "
        f"reward.data.validation_fraction={validation_fraction:g}): too few to train and judge a reward model; "
        + _SEPARATE
    )


_SEPARATE = "use a gold that separates responses (e.g. fluency_weight > 0) or more label_prompts"


def noisy_rankings(config: RLHFConfig, comparisons: list[Comparison], gold, path: Path) -> dict:
    """The same responses re-ranked by labelers who see the gold scores through Gaussian noise, its std set so
    that two such labelers agree on `label_agreement` of the non-tied pairs (labeler_agreement)."""
    scores = [score_responses(gold, [c.prompt] * len(c.responses), list(c.responses)) for c in comparisons]
    differences = [s[i] - s[j] for s in scores for i in range(len(s)) for j in range(i + 1, len(s))]
    sigma = noise_for_agreement(differences, config.label_agreement)
    rng = np.random.default_rng(config.runtime.seed + 1)
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
    train, heldout = heldout_split(config, comparisons)
    files = {"rm": rankings_path}
    weak = train[: max(2, round(config.weak_fraction * len(train)))]
    files["rm_weak"] = out / "labels" / f"rankings_weak_{len(weak)}.jsonl"  # its size in the name: a stage's cache
    # key is its config, and a different subset is a different run
    write_rankings(files["rm_weak"], weak)
    info: dict = {"rankings": len(comparisons), "heldout_rankings": len(heldout), "weak_rankings": len(weak)}
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
            runtime=replace(config.reward.runtime, seed=config.runtime.seed, device=config.runtime.device),
        )
        paths[name] = run_stage(reward, settings)
    for name, path in paths.items():
        accuracy, pairs = heldout_accuracy(path, heldout)
        info[name] = {"heldout_gold_accuracy": accuracy, "heldout_pairs": pairs}
    return paths, info


def heldout_split(config: RLHFConfig, comparisons: list[Comparison]) -> tuple[list[Comparison], list[Comparison]]:
    """(training, held-out) rankings: the split the reward stage makes of them (reward.data.validation_fraction,
    seeded by runtime.seed)."""
    train, heldout = split_validation(len(comparisons), config.reward.data.validation_fraction, config.runtime.seed)
    return [comparisons[i] for i in train], [comparisons[i] for i in heldout]


def heldout_accuracy(reward_model: Path, heldout: list[Comparison]) -> tuple[float, int]:
    """(share of the held-out rankings' ordered pairs the reward model orders as the gold did, those pairs)."""
    scorer = load_reward_model(reward_model)
    rewards = [scorer.rewards([(c.prompt, r) for r in c.responses]).tolist() for c in heldout]
    return pairwise_accuracy(rewards, [c.ranks for c in heldout])


def reward_model_on(config: RLHFConfig, out_dir: Path, rankings: Path, model: Path) -> Path:
    """A reward model from `model`'s trunk on every ranking of `rankings` (none held out: the caller holds its own
    out beforehand), with the config's reward settings, seed and device."""
    settings = replace(
        config.reward,
        out_dir=str(out_dir),
        data=replace(config.reward.data, rankings=str(rankings), demonstrations=None, validation_fraction=0.0),
        model=replace(config.reward.model, init_from=str(model)),
        runtime=replace(config.reward.runtime, seed=config.runtime.seed, device=config.runtime.device),
    )
    return run_stage(reward, settings)
