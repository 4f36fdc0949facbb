"""`prefer experiment` (and `prefer demo`, its two-objective default): the paper's experiment for one task.

One model per objective on the same corpus and the same number of tokens (Korbak et al. 2023, Sec. 4), plus, if
asked, MLE runs continued from an MLE snapshot with a feedback objective (Sec. 5: finetuning vs pretraining with
feedback). Every model is evaluated on the same protocol, and the results directory holds:

    results.json   everything measured (per-sample scores, curves, learning curves)
    results.csv    one row per model
    results.md     the table
    pareto.png     misalignment vs capability cost, Pareto frontier marked
    misalignment_vs_tokens.png   log-log, one line per model
    <model>/       each run: config.yaml, metrics, checkpoints, snapshots, final/, samples*.jsonl

Killed at any point, the same command resumes: finished runs are reused, an unfinished one continues from its
last checkpoint, evaluations are recomputed (they are deterministic given the seed).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from prefer import checkpoint_record
from prefer.config import ExperimentConfig, InferenceRuntimeConfig, PretrainConfig, RedteamConfig, save_config
from prefer.data.pipeline import build_corpus
from prefer.errors import PreferError
from prefer.evaluation.capability import (
    code_completion_eval,
    function_prompts,
    heldout_loss_per_token_and_byte,
    kl_to_reference,
)
from prefer.evaluation.metrics import ratio_ci
from prefer.evaluation.misalignment import sample_and_score, write_samples
from prefer.figures import (
    plot_misalignment_vs_tokens,
    plot_pareto,
    plot_redteam_comparison,
)
from prefer.files import write_json_atomic, write_text_atomic
from prefer.models.build import load_checkpoint
from prefer.stages.pretrain import pretrain
from prefer.stages.redteam import redteam
from prefer.tasks import Task, get_task
from prefer.training import read_metrics, resolve_device

CHANGELOGS = "/usr/share/doc/*/changelog.Debian.gz"


@dataclass(frozen=True)
class PlannedRun:
    """One model of the experiment: `objective` from the start, or from `init_fraction` of MLE's budget."""

    name: str
    objective: str
    init_fraction: float | None = None


def plan(config: ExperimentConfig) -> list[PlannedRun]:
    """MLE first (the finetuning runs start from its snapshots), then the other objectives, then finetuning."""
    names = sorted(
        set(config.objectives) | ({"mle"} if config.finetune else set()),
        key=lambda n: (n != "mle", config.objectives.index(n) if n in config.objectives else 0),
    )
    runs = [PlannedRun(name, name) for name in names]
    percent = round(100 * config.finetune_from)
    runs += [PlannedRun(f"mle_then_{name}_at_{percent}pct", name, config.finetune_from) for name in config.finetune]
    return runs


def resolve_task(config: ExperimentConfig) -> Task:
    if config.task == "pii" and config.pretrain.data.source is None and not glob.glob(CHANGELOGS):
        print(f"[experiment] no Debian changelogs on this machine ({CHANGELOGS}); running the pep8 task instead")
        return get_task("pep8")
    return get_task(config.task)


def run_config(config: ExperimentConfig, task: Task, run: PlannedRun, out: Path) -> PretrainConfig:
    """The pretraining config of one planned run: the shared one with this objective, its own directory, and
    snapshots for the curve (plus the finetuning start point in MLE's run)."""
    base = config.pretrain
    snapshots = {*base.train.snapshots, 1.0}
    if run.name == "mle" and config.finetune:
        snapshots.add(config.finetune_from)
    model = base.model
    if run.init_fraction is not None:
        model = replace(model, init_from=str(_snapshot_at(out / "mle", run.init_fraction, base.train.tokens)))
    return replace(
        base,
        out_dir=str(out / run.name),
        data=replace(base.data, task=task.name),
        model=model,
        objective=replace(base.objective, name=run.objective),
        train=replace(base.train, snapshots=sorted(snapshots)),
    )


def _snapshot_at(run_dir: Path, fraction: float, budget: int) -> Path:
    snapshots = sorted((run_dir / "snapshots").glob("tokens_*"))
    if not snapshots:
        raise FileNotFoundError(f"{run_dir}/snapshots: MLE must run before the finetuning runs")
    return min(snapshots, key=lambda p: abs(int(p.name.split("_")[1]) - fraction * budget))


def experiment(config: ExperimentConfig) -> dict:
    started = time.perf_counter()
    task = resolve_task(config)
    out = Path(config.out_dir) / task.name
    device = resolve_device(config.pretrain.runtime.device)
    save_config(config, out / "experiment.yaml")

    results: dict = {
        "task": task.name,
        "scorers": list(task.eval_scorers),
        "models": {},
        "seconds": {},
        "reference": config.reference,
    }
    validation: list[str] = []
    reference = None  # (model, tokenizer, path), loaded once: the MLE model is the first run
    for run in plan(config):
        run_started = time.perf_counter()
        final = pretrain(run_config(config, task, run, out), resume=True)
        entry = cached_evaluation(final, config, out / run.name)
        if entry is None:
            validation = validation or validation_texts(config, task)
            if config.reference is not None and reference is None:
                path = out / "mle" / "final" if config.reference == "mle" else Path(config.reference)
                reference = (*load_checkpoint(path, device)[:2], path)
            loaded = load_checkpoint(final, device)
            entry = evaluate_run(loaded, task.name, config, device, out / run.name)
            entry |= capability(loaded, config, task, validation, reference)
            write_json_atomic(out / run.name / EVALUATION, {"key": evaluation_key(final, config), "entry": entry})
        entry.update({"objective": run.objective, "init_fraction": run.init_fraction})
        results["models"][run.name] = entry
        results["seconds"][run.name] = time.perf_counter() - run_started
        print(f"[experiment] {run.name}: {headline(entry, task.eval_scorers[0])}")

    if config.redteam.models:
        results["redteam"] = {name: red_team(config, out, name) for name in config.redteam.models}
    results["comparison"] = compare(results["models"], task.eval_scorers)
    results["seconds"]["total"] = time.perf_counter() - started
    write_results(results, out)
    print(format_table(results))
    print(
        f"[experiment] {results['seconds']['total'] / 60:.1f} min; results in {out}/ (results.md, results.csv, "
        "pareto.png, misalignment_vs_tokens.png)"
    )
    return results


EVALUATION = "experiment_evaluation.json"


def evaluation_key(final: Path, config: ExperimentConfig) -> dict:
    """What an evaluation depends on: the model (its prefer.json: tokens, losses) and the evaluation settings."""
    return {
        "model": checkpoint_record.read(final).as_dict(),
        "sampling": asdict(config.sampling),
        **{
            k: getattr(config, k)
            for k in ("curve_samples", "reference", "kl_samples", "capability_documents", "code_prompts")
        },
    }


def cached_evaluation(final: Path, config: ExperimentConfig, run_dir: Path) -> dict | None:
    """A re-run of the command reuses an evaluation of the same model under the same settings."""
    path = run_dir / EVALUATION
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["entry"] if saved["key"] == json.loads(json.dumps(evaluation_key(final, config))) else None


def evaluate_run(loaded: tuple, task_name: str, config: ExperimentConfig, device, run_dir: Path) -> dict:
    """The final model (`load_checkpoint`'s model, tokenizer, info) on the full protocol (and prompted with
    `<|bad|>` if it knows the tags), plus every snapshot on a smaller one for the curve over training tokens."""
    model, tokenizer, info = loaded
    evaluation = sample_and_score(model, tokenizer, info, task_name=task_name, sampling=config.sampling)
    write_samples(run_dir / "samples.jsonl", evaluation.pop("samples"), evaluation.pop("samples_with_controls"))
    entry = {
        "heldout_loss": info["val_loss"],
        "heldout_loss_with_true_tags": info.get("val_loss_with_true_tags"),
        "tokens": info["tokens"],
        "evaluation": evaluation,
    }
    if info.get("control_tokens_trained"):
        contrast = sample_and_score(model, tokenizer, info, task_name=task_name, sampling=config.sampling, prompt="bad")
        write_samples(run_dir / "samples_bad.jsonl", contrast.pop("samples"), contrast.pop("samples_with_controls"))
        entry["prompted_bad"] = contrast
    entry["curve"] = []
    for snapshot in sorted((run_dir / "snapshots").glob("tokens_*")):
        model, tokenizer, info = load_checkpoint(snapshot, device)
        point = sample_and_score(
            model,
            tokenizer,
            info,
            task_name=task_name,
            sampling=config.sampling,
            num_samples=config.curve_samples,
            progress=False,
        )
        del point["samples"], point["samples_with_controls"]
        entry["curve"].append(
            {
                "tokens": info["tokens"],
                **{name: {k: s[k] for k in ("mean", "mean_ci", "pooled")} for name, s in point["scores"].items()},
            }
        )
    entry["train_metrics"] = [m for m in read_metrics(run_dir) if "val/loss" in m]
    return entry


def validation_texts(config: ExperimentConfig, task: Task) -> list[str]:
    """The first `capability_documents` validation documents of the experiment's corpus (cached by now)."""
    data = config.pretrain.data
    corpus = build_corpus(
        task,
        source=data.source,
        max_bytes=data.max_bytes,
        threshold=task.threshold,
        validation_fraction=data.validation_fraction,
        cache_dir=data.cache_dir,
        workers=data.workers,
        progress=False,
    )
    return ["".join(d.segments) for d in corpus.validation[: config.capability_documents]]


def capability(
    loaded: tuple, config: ExperimentConfig, task: Task, validation: list[str], reference: tuple | None
) -> dict:
    """Held-out loss per token and per byte on validation documents, KL(reference || model) when a reference
    (model, tokenizer, path) is given, and for code the prompted completion scenario (parse rate and style of completed
    function signatures)."""
    model, tokenizer, info = loaded
    conditional = bool(info.get("control_tokens_trained"))
    batch = config.sampling.batch_size
    entry: dict = {
        "heldout": heldout_loss_per_token_and_byte(
            model, tokenizer, validation, batch_size=batch, control_tokens_trained=conditional
        )
    }
    if reference is not None:
        reference_model, reference_tokenizer, path = reference
        kl = kl_to_reference(
            reference_model,
            reference_tokenizer,
            model,
            tokenizer,
            num_samples=config.kl_samples,
            max_new_tokens=config.sampling.max_new_tokens,
            batch_size=batch,
            seed=config.sampling.seed,
            model_info=info,
        )
        kl.pop("per_sample")
        entry |= {"kl_to_reference": kl["kl"], "kl_ci": kl["ci"], "kl": kl, "reference_path": str(path)}
    if task.name == "pep8" and config.code_prompts:
        prompts = function_prompts(validation, limit=config.code_prompts)
        if prompts:
            code = code_completion_eval(
                model,
                tokenizer,
                prompts,
                control_tokens_trained=conditional,
                max_new_tokens=config.sampling.max_new_tokens,
                batch_size=batch,
                seed=config.sampling.seed,
            )
            code.pop("texts", None)
            for scores in code["scores"].values():
                scores.pop("per_sample", None)
            entry["code_completion"] = code
    return entry


def red_team(config: ExperimentConfig, out: Path, name: str) -> dict:
    """Red-team one model of the experiment (`prefer redteam`); reuses a finished run with the same settings."""
    names = [run.name for run in plan(config)]
    if name not in names:
        raise PreferError(f"redteam: {name!r} is not a model of this experiment ({', '.join(names)})")
    chosen = config.redteam
    redteam_model = out / "mle" / "final" if chosen.redteam_model == "mle" else Path(chosen.redteam_model)
    runtime = config.pretrain.runtime
    settings = RedteamConfig(
        out_dir=str(out / name / "redteam"),
        target=str(out / name / "final"),
        redteam_model=str(redteam_model),
        search=chosen.search,
        continuations=chosen.continuations,
        runtime=InferenceRuntimeConfig(seed=config.sampling.seed, device=runtime.device, progress=runtime.progress),
    )
    done = Path(settings.out_dir) / "redteam.json"
    if done.exists():
        previous = json.loads(done.read_text())
        if previous["config"] == asdict(settings):
            return previous["summary"]
    return redteam(settings)["summary"]


def compare(models: dict, scorers) -> dict:
    """MLE / model per scorer, with bootstrap intervals from the per-sample scores, and the share of samples with
    any misalignment."""
    if "mle" not in models:
        return {}
    comparison = {}
    for name, entry in models.items():
        if name == "mle":
            continue
        comparison[name] = {}
        for scorer in scorers:
            base = np.asarray(models["mle"]["evaluation"]["scores"][scorer]["per_sample"])
            other = np.asarray(entry["evaluation"]["scores"][scorer]["per_sample"])
            ratio, low, high = ratio_ci(base, other)
            comparison[name][scorer] = {
                "mle_over_model": ratio,
                "ci": [low, high],
                "samples_with_any": {"mle": float((base > 0).mean()), name: float((other > 0).mean())},
            }
    return comparison


def headline(entry: dict, scorer: str) -> str:
    score = entry["evaluation"]["scores"][scorer]
    return (
        f"held-out loss {entry['heldout_loss']:.3f}, {scorer} misalignment {score['mean']:.2e} "
        f"[{score['mean_ci'][0]:.2e}, {score['mean_ci'][1]:.2e}]"
    )


def _rows(results: dict):
    """(label, model name, evaluation, is the tag contrast) per table row."""
    for name, entry in results["models"].items():
        yield name, name, entry["evaluation"], False
        if "prompted_bad" in entry:  # the label states what the sampler blocked, as recorded with the samples
            blocked = {"none": "nothing", "good": "`<|good|>`", "bad": "`<|bad|>`", "both": "both tags"}[
                entry["prompted_bad"].get("blocked", "none")
            ]
            yield f"{name}, prompted `<|bad|>` ({blocked} blocked)", name, entry["prompted_bad"], True


def _ratio(results: dict, name: str, scorer: str, evaluation: dict, contrast: bool) -> str:
    if name == "mle" and not contrast:
        return "1 (baseline)"
    if not contrast and name in results["comparison"]:
        c = results["comparison"][name][scorer]
        return f"{c['mle_over_model']:.1f}x [{c['ci'][0]:.1f}, {c['ci'][1]:.1f}]"
    if "mle" in results["models"]:
        base = results["models"]["mle"]["evaluation"]["scores"][scorer]["mean"]
        mean = evaluation["scores"][scorer]["mean"]
        return f"{base / mean:.2f}x" if mean > 0 else "inf"
    return "-"


def _row(cells) -> str:
    """A Markdown table row; pipes inside a cell (`<|bad|>`, KL(a || b)) are escaped so they do not split it."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def format_table(results: dict) -> str:
    """A Markdown table: one row per model (and conditional models prompted with `<|bad|>`)."""
    scorers = results["scorers"]
    has_kl = any(m.get("kl_to_reference") is not None for m in results["models"].values())
    head = (
        ["model", "held-out loss", "loss/byte"]
        + ([f"KL({results['reference']} || model)"] if has_kl else [])
        + [f"{s} {col}" for s in scorers for col in ("mean [95% CI]", "pooled/char", "samples > t", "MLE / model")]
    )
    lines = [_row(head), "|" + "---|" * len(head)]
    for label, name, evaluation, contrast in _rows(results):
        entry = results["models"][name]
        loss = f"{entry['heldout_loss']:.3f}"
        if entry.get("heldout_loss_with_true_tags") is not None:
            loss += f" ({entry['heldout_loss_with_true_tags']:.3f} with true tags)"
        cells = [label, loss, f"{entry['heldout']['loss_per_byte']:.3f}" if "heldout" in entry else "-"]
        if has_kl:
            kl = entry.get("kl_to_reference")
            cells.append("-" if kl is None else f"{kl:.1f} [{entry['kl_ci'][0]:.1f}, {entry['kl_ci'][1]:.1f}]")
        for scorer in scorers:
            s = evaluation["scores"][scorer]
            cells += [
                f"{s['mean']:.2e} [{s['mean_ci'][0]:.2e}, {s['mean_ci'][1]:.2e}]",
                f"{s['pooled']:.2e}",
                f"{100 * s['fraction_above_threshold']:.1f}%",
                _ratio(results, name, scorer, evaluation, contrast),
            ]
        lines.append(_row(cells))
    first = next(iter(results["models"].values()))
    lines.append(
        f"\n{first['evaluation']['num_samples']} samples per row, {results['task']} task, "
        f"{first['tokens']:,} training tokens per model; samples > t: samples scoring above "
        f"{first['evaluation']['scores'][scorers[0]]['threshold']:g}; intervals are 95% bootstrap intervals; "
        "held-out loss in nats per content token on plain "
        "validation text (a conditional model also on text with its true tags); loss/byte: nats per UTF-8 "
        "byte of whole validation documents"
        + (
            f"; KL in nats per sample of the reference ({results['reference']}), control tokens not counted"
            if has_kl
            else ""
        )
        + "."
    )
    if results.get("redteam"):
        lines += ["", redteam_table(results)]
    return "\n".join(lines)


def redteam_table(results: dict) -> str:
    """Red-teaming per model: the pool's best, top-10 mean and mean misalignment, first round -> last round."""
    lines = ["| red-teamed model | best in pool | top-10 mean | pool mean |", "|---|---|---|---|"]
    for name, summary in results["redteam"].items():
        cells = [
            f"{summary[key]['mean'][0]:.2e} -> {summary[key]['mean'][-1]:.2e}"
            for key in ("best", "top10_mean", "pool_mean")
        ]
        lines.append(_row([name, *cells]))
    first = next(iter(results["redteam"].values()))
    lines.append(
        f"\nRed-teaming: round 0 (the seed prompts) -> round {first['rounds'][-1]}, mean over "
        f"{first['trials']} trials; a prompt's score is the mean {results['scorers'][0]} misalignment of the "
        "target's continuations."
    )
    return "\n".join(lines)


def format_csv(results: dict) -> str:
    """One row per model: capability measures and, per scorer, mean, interval, pooled, fraction above t, ratio."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    scorers = results["scorers"]
    writer.writerow(
        [
            "model",
            "objective",
            "init_fraction",
            "prompt",
            "tokens",
            "heldout_loss",
            "heldout_loss_with_true_tags",
            "heldout_loss_per_byte",
            "kl_to_reference",
            "kl_ci_low",
            "kl_ci_high",
            "code_parse_rate",
            "distinct_2",
            "fraction_ended",
        ]
        + [
            f"{s}_{k}"
            for s in scorers
            for k in ("mean", "ci_low", "ci_high", "pooled", "fraction_above_t", "expected_max_25", "mle_over_model")
        ]
    )
    for _label, name, evaluation, contrast in _rows(results):
        entry = results["models"][name]
        kl_ci = entry.get("kl_ci") or [None, None]
        row = [
            name,
            entry["objective"],
            entry["init_fraction"],
            evaluation["prompt"],
            entry["tokens"],
            entry["heldout_loss"],
            entry.get("heldout_loss_with_true_tags"),
            entry.get("heldout", {}).get("loss_per_byte"),
            entry.get("kl_to_reference"),
            *kl_ci,
            entry.get("code_completion", {}).get("parse_rate"),
            evaluation["distinct_2"],
            evaluation["fraction_ended"],
        ]
        for scorer in scorers:
            s = evaluation["scores"][scorer]
            ratio = None
            if not contrast and name in results["comparison"]:
                ratio = results["comparison"][name][scorer]["mle_over_model"]
            row += [s["mean"], *s["mean_ci"], s["pooled"], s["fraction_above_threshold"], s["expected_max_25"], ratio]
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def write_results(results: dict, out: Path) -> None:
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.csv", format_csv(results))
    write_text_atomic(out / "results.md", format_table(results) + "\n")
    plot_pareto(results, results["scorers"], out / "pareto.png")
    plot_misalignment_vs_tokens(results, results["scorers"], out / "misalignment_vs_tokens.png")
    if results.get("redteam"):
        plot_redteam_comparison(results, out / "redteam.png")


def load_results(out: Path) -> dict:
    return json.loads((Path(out) / "results.json").read_text())
