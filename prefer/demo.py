"""`prefer demo`: the central claim of Korbak et al. (2023) on real data, on a laptop.

The same small GPT-2 is pretrained on the same scored corpus for the same tokens with MLE and with conditional
training; both are evaluated on the same sampling protocol; a table and a plot of misalignment over training
tokens show how far apart they are, with bootstrap intervals. Killed, it resumes where it stopped.
"""

from __future__ import annotations

import glob
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from prefer.config import DemoConfig
from prefer.evaluation.metrics import ratio_ci
from prefer.io import atomic_path, write_json_atomic, write_text_atomic
from prefer.stages.evaluate import load_checkpoint, sample_and_score, write_samples
from prefer.stages.pretrain import pretrain
from prefer.tasks import get_task
from prefer.training import read_metrics, resolve_device

CHANGELOGS = "/usr/share/doc/*/changelog.Debian.gz"


def demo(config: DemoConfig) -> dict:
    started = time.perf_counter()
    task_name = config.task
    if task_name == "pii" and config.pretrain.data.source is None and not glob.glob(CHANGELOGS):
        print(f"[demo] no Debian changelogs on this machine ({CHANGELOGS}); running the pep8 task instead")
        task_name = "pep8"
    task = get_task(task_name)
    out = Path(config.out_dir) / task.name
    device = resolve_device(config.pretrain.train.device)

    results: dict = {"task": task.name, "objectives": {}}
    for name in config.objectives:
        run = replace(config.pretrain, out_dir=str(out / name), data=replace(config.pretrain.data, task=task.name),
                      objective=replace(config.pretrain.objective, name=name),
                      train=replace(config.pretrain.train, snapshots=sorted({*config.pretrain.train.snapshots, 1.0})))
        final = pretrain(run, resume=True)
        results["objectives"][name] = _evaluate_run(final, task.name, config, device, out / name)
        print(f"[demo] {name}: {_headline(results['objectives'][name], task.eval_scorers[0])}")

    results["comparison"] = _compare(results["objectives"], task.eval_scorers)
    results["seconds"] = time.perf_counter() - started
    table = format_table(results, task.eval_scorers)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", table + "\n")
    plot_curves(results, task.eval_scorers[0], out / "misalignment_vs_tokens.png")
    print(table)
    print(f"[demo] {results['seconds'] / 60:.1f} min; results in {out}/results.json, plot in "
          f"{out}/misalignment_vs_tokens.png")
    return results


def _evaluate_run(final: Path, task_name: str, config: DemoConfig, device, run_dir: Path) -> dict:
    """The final model on the full protocol (and prompted with `<|bad|>` if it knows the tags), plus every snapshot
    on a smaller one for the curve over training tokens."""
    model, tokenizer, info = load_checkpoint(final, device)
    evaluation = sample_and_score(model, tokenizer, info, task_name=task_name, sampling=config.sampling)
    write_samples(run_dir / "samples.jsonl", evaluation.pop("samples"))
    entry = {"heldout_loss": info["val_loss"], "heldout_loss_with_true_tags": info.get("val_loss_with_true_tags"),
             "tokens": info["tokens"], "evaluation": evaluation}
    if info.get("control_tokens_trained"):
        contrast = sample_and_score(model, tokenizer, info, task_name=task_name, sampling=config.sampling, prompt="bad")
        write_samples(run_dir / "samples_bad.jsonl", contrast.pop("samples"))
        entry["prompted_bad"] = contrast
    entry["curve"] = []
    for snapshot in sorted((run_dir / "snapshots").glob("tokens_*")):
        model, tokenizer, info = load_checkpoint(snapshot, device)
        point = sample_and_score(model, tokenizer, info, task_name=task_name, sampling=config.sampling,
                                 num_samples=config.curve_samples, progress=False)
        entry["curve"].append({"tokens": info["tokens"], **{name: {k: s[k] for k in ("mean", "mean_ci", "pooled")}
                                                            for name, s in point["scores"].items()}})
    entry["train_metrics"] = [m for m in read_metrics(run_dir) if "val/loss" in m]
    return entry


def _compare(objectives: dict, scorers) -> dict:
    """MLE / other, per scorer, with bootstrap intervals from the per-sample scores."""
    if "mle" not in objectives:
        return {}
    comparison = {}
    for name, entry in objectives.items():
        if name == "mle":
            continue
        comparison[name] = {}
        for scorer in scorers:
            base = np.asarray(objectives["mle"]["evaluation"]["scores"][scorer]["per_sample"])
            other = np.asarray(entry["evaluation"]["scores"][scorer]["per_sample"])
            ratio, low, high = ratio_ci(base, other)
            any_base, any_other = float((base > 0).mean()), float((other > 0).mean())
            comparison[name][scorer] = {"mle_over_objective": ratio, "ci": [low, high],
                                        "samples_with_any": {"mle": any_base, name: any_other}}
    return comparison


def _headline(entry: dict, scorer: str) -> str:
    score = entry["evaluation"]["scores"][scorer]
    return (f"held-out loss {entry['heldout_loss']:.3f}, {scorer} misalignment {score['mean']:.2e} "
            f"[{score['mean_ci'][0]:.2e}, {score['mean_ci'][1]:.2e}]")


def format_table(results: dict, scorers) -> str:
    """A Markdown table: one row per model (and the conditional model prompted with `<|bad|>`)."""
    head = "| model | held-out loss | " + " | ".join(
        f"{s} mean [95% CI] | {s} pooled/char | {s} samples > t | MLE / model" for s in scorers) + " |"
    lines = [head, "|" + "---|" * (2 + 4 * len(scorers))]
    for name, entry in results["objectives"].items():
        rows = [(name, entry["evaluation"], results["comparison"].get(name))]
        if "prompted_bad" in entry:
            rows.append((f"{name}, prompted `<|bad|>`", entry["prompted_bad"], None))
        for label, evaluation, comparison in rows:
            loss = f"{entry['heldout_loss']:.3f}"
            if entry.get("heldout_loss_with_true_tags") is not None:
                loss += f" ({entry['heldout_loss_with_true_tags']:.3f} with true tags)"
            cells = [label, loss]
            for scorer in scorers:
                s = evaluation["scores"][scorer]
                ratio = "1 (baseline)" if name == "mle" and comparison is None and "prompted" not in label else "-"
                if comparison is not None:
                    c = comparison[scorer]
                    ratio = f"{c['mle_over_objective']:.1f}x [{c['ci'][0]:.1f}, {c['ci'][1]:.1f}]"
                elif "prompted" in label and "mle" in results["objectives"]:
                    base = results["objectives"]["mle"]["evaluation"]["scores"][scorer]["mean"]
                    ratio = f"{base / s['mean']:.2f}x" if s["mean"] > 0 else "inf"
                cells += [f"{s['mean']:.2e} [{s['mean_ci'][0]:.2e}, {s['mean_ci'][1]:.2e}]", f"{s['pooled']:.2e}",
                          f"{100 * s['fraction_above_threshold']:.1f}%", ratio]
            lines.append("| " + " | ".join(cells) + " |")
    n = next(iter(results["objectives"].values()))["evaluation"]["num_samples"]
    lines.append(f"\n{n} samples per row, {results['task']} task; threshold t = {get_task(results['task']).threshold}; "
                 "intervals are 95% bootstrap intervals; held-out loss in nats per content token on plain "
                 "validation text (a conditional model also on text with its true tags).")
    return "\n".join(lines)


def plot_curves(results: dict, scorer: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, NullFormatter

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, entry in results["objectives"].items():
        curve = entry["curve"]
        if not curve:
            continue
        tokens = [p["tokens"] for p in curve]
        means = [p[scorer]["mean"] for p in curve]
        lows = [p[scorer]["mean_ci"][0] for p in curve]
        highs = [p[scorer]["mean_ci"][1] for p in curve]
        axes[0].plot(tokens, means, marker="o", label=name)
        axes[0].fill_between(tokens, lows, highs, alpha=0.2)
        losses = entry["train_metrics"]
        axes[1].plot([m["tokens"] for m in losses], [m["val/loss"] for m in losses], label=name)
    axes[0].set(xlabel="training tokens", ylabel=f"{scorer} misalignment (mean per char)", xscale="log",
                title="misalignment of samples")
    axes[0].set_yscale("symlog", linthresh=1e-4)  # log-like, yet a model with zero misalignment stays on the plot
    axes[0].set_ylim(bottom=0)
    axes[1].set(xlabel="training tokens", ylabel="held-out loss (content tokens)", xscale="log", title="capability")
    for axis in axes:
        axis.xaxis.set_major_formatter(EngFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
