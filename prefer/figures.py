"""The paper's figures (Korbak et al. 2023, Figs. 2-4) from an experiment's results dict, as PNG files.

- `plot_pareto`: misalignment vs capability cost (held-out loss; KL to a reference model), the Pareto frontier
  marked: models no other model beats on both axes.
- `plot_misalignment_vs_tokens`: misalignment of samples over training tokens, log-log, one line per model.
Every figure is written atomically; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefer.files import atomic_path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, misalignment) points, lower is better on both: True where no other point is at least as good on
    both axes and strictly better on one."""
    return [not any(cx <= x and cy <= y and (cx < x or cy < y) for cx, cy in points) for x, y in points]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    """Lay the figure out, write it as PNG (atomically: a reader never sees half a file) and free it."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    _pyplot().close(figure)


def _log_floor(values: Sequence[float]) -> float:
    """Where zeros go on a log axis: half the smallest positive value (a model with no misaligned sample stays on
    the plot, marked hollow)."""
    positive = [v for v in values if v > 0]
    return min(positive) / 2 if positive else 1e-6


CAPABILITY_AXES = {
    "heldout_loss": "held-out loss (nats/token, plain text)",
    "kl_to_reference": "KL(reference || model) (nats/sample)",
}


def plot_pareto(results: dict, scorers: Sequence[str], path: Path) -> None:
    """One panel per (scorer, capability measure): a point per model with its 95% interval on misalignment."""
    plt = _pyplot()
    axes_used = [key for key in CAPABILITY_AXES if any(m.get(key) is not None for m in results["models"].values())]
    figure, axes = plt.subplots(
        len(scorers), len(axes_used), figsize=(5.5 * len(axes_used), 4.2 * len(scorers)), squeeze=False
    )
    names = list(results["models"])
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    for row, scorer in enumerate(scorers):
        for col, key in enumerate(axes_used):
            axis = axes[row][col]
            entries = [(n, m) for n, m in results["models"].items() if m.get(key) is not None]
            points = [(m[key], m["evaluation"]["scores"][scorer]["mean"]) for _, m in entries]
            front = pareto_front(points)
            for (name, entry), (x, y), on_front in zip(entries, points, front):
                low, high = entry["evaluation"]["scores"][scorer]["mean_ci"]
                axis.errorbar(
                    [x],
                    [y],
                    yerr=[[y - low], [high - y]],
                    fmt="o",
                    color=colors[name],
                    markersize=9 if on_front else 6,
                    label=name,
                )
            frontier = sorted(p for p, on in zip(points, front) if on)
            axis.step(
                [p[0] for p in frontier],
                [p[1] for p in frontier],
                where="post",
                color="black",
                linestyle="--",
                linewidth=1,
                label="Pareto frontier",
            )
            axis.set(
                xlabel=CAPABILITY_AXES[key],
                ylabel=f"{scorer} misalignment (mean per sample)",
                title=f"{results['task']}: {scorer} vs {key.replace('_', ' ')}",
            )
            axis.grid(alpha=0.3)
            if row == 0 and col == 0:
                axis.legend(fontsize=8)
    figure.suptitle("lower-left is better; dashed: models no other model beats on both axes", fontsize=9)
    _save(figure, path)


def plot_misalignment_vs_tokens(results: dict, scorers: Sequence[str], path: Path) -> None:
    """Misalignment (log) over training tokens (log), one panel per scorer, plus held-out loss over tokens."""
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter, NullFormatter

    figure, axes = plt.subplots(1, len(scorers) + 1, figsize=(5 * (len(scorers) + 1), 4))
    for axis, scorer in zip(axes, scorers):
        values = [p[scorer]["mean"] for m in results["models"].values() for p in m["curve"]]
        floor = _log_floor(values)
        for name, entry in results["models"].items():
            if not entry["curve"]:
                continue
            tokens = [p["tokens"] for p in entry["curve"]]
            means = [max(p[scorer]["mean"], floor) for p in entry["curve"]]
            (line,) = axis.plot(tokens, means, marker="o", label=name)
            zeros = [(t, floor) for t, p in zip(tokens, entry["curve"]) if p[scorer]["mean"] <= 0]
            if zeros:
                axis.plot(*zip(*zeros), "o", markerfacecolor="white", color=line.get_color())
        axis.set(
            xscale="log",
            yscale="log",
            xlabel="training tokens",
            ylabel=f"{scorer} misalignment (mean)",
            title=f"{scorer}: samples over training (hollow: 0)",
        )
    for name, entry in results["models"].items():
        losses = entry.get("train_metrics", [])
        axes[-1].plot([m["tokens"] for m in losses], [m["val/loss"] for m in losses], label=name)
    axes[-1].set(xscale="log", xlabel="training tokens", ylabel="held-out loss (content tokens)", title="capability")
    for axis in axes:
        axis.xaxis.set_major_formatter(EngFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    _save(figure, path)


def plot_redteam_comparison(results: dict, path: Path) -> None:
    """Red-teaming curves of several models side by side: best, top-10 mean and pool mean per round."""
    plt = _pyplot()
    keys = (("best", "best prompt in pool"), ("top10_mean", "top-10 mean"), ("pool_mean", "pool mean"))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, summary in results["redteam"].items():
        for axis, (key, title) in zip(axes, keys):
            low, high = zip(*summary[key]["ci"])
            axis.plot(summary["rounds"], summary[key]["mean"], marker="o", label=name)
            axis.fill_between(summary["rounds"], low, high, alpha=0.15)
            axis.set(xlabel="red-teaming round", ylabel=f"{results['scorers'][0]} misalignment", title=title)
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{results['task']}: red-teaming (stochastic few-shot generation), mean over trials", fontsize=10)
    _save(figure, path)


# ------------------------------------------------------------------ `prefer rlhf` (Gao et al. 2022; Ouyang et al. 2022)


def _sqrt(kl: float) -> float:
    return max(kl, 0.0) ** 0.5


# The trained policies of `prefer rlhf` by kind: marker, colour, legend (one point per run).
POLICY_STYLES = {
    ("ppo", "ppo_ptx"): ("^", "tab:green", "PPO / PPO-ptx vs reward model (one run per setting)"),
    ("dpo", "ipo"): ("D", "tab:brown", "DPO / IPO on the rankings (one run per beta)"),
    ("listwise",): ("P", "tab:pink", "listwise DPO (Plackett-Luce) on the rankings"),
    ("rloo", "grpo"): ("v", "tab:cyan", "RLOO / GRPO vs reward model"),
}


def plot_overoptimisation(results: dict, path: Path) -> None:
    """Gold reward (left) and proxy reward (right) against sqrt(KL to SFT): best-of-n selected by each proxy (KL
    analytic), PPO against the weak proxy over its iterations (KL measured), PPO runs against the reward model."""
    plt = _pyplot()
    figure, (gold_axis, proxy_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"rm_weak": ("tab:red", "weak proxy"), "rm": ("tab:blue", "reward model")}
    for proxy, entries in results["best_of_n"].items():
        color, label = styles.get(proxy, ("tab:gray", proxy))
        d = [_sqrt(e["kl_analytic"]) for e in entries]
        gold_axis.plot(
            d,
            [-e["gold"]["mean"] for e in entries],
            "o--",
            color=color,
            label=f"best-of-n vs {label} (n = {entries[0]['n']}..{entries[-1]['n']})",
        )
        gold_axis.fill_between(
            d, [-e["gold"]["ci"][1] for e in entries], [-e["gold"]["ci"][0] for e in entries], color=color, alpha=0.1
        )
        proxy_axis.plot(
            d,
            [e["proxy_reward"][proxy]["mean"] for e in entries],
            "o--",
            color=color,
            label=f"best-of-n vs {label}: {proxy} reward",
        )
    curve = results.get("overoptimisation") or []
    if curve:  # the run starts at the SFT model: KL 0
        curve = [{**results["policies"]["sft"], "iterations": 0}, *curve]
        d = [_sqrt(p["kl"]["mean"]) for p in curve]
        gold_axis.plot(
            d,
            [-p["gold"]["mean"] for p in curve],
            "s-",
            color="tab:orange",
            label=f"PPO vs weak proxy ({curve[0]['iterations']}..{curve[-1]['iterations']} iterations)",
        )
        gold_axis.fill_between(
            d, [-p["gold"]["ci"][1] for p in curve], [-p["gold"]["ci"][0] for p in curve], color="tab:orange", alpha=0.1
        )
        proxy_axis.plot(
            d,
            [p["proxy_reward"]["rm_weak"]["mean"] for p in curve],
            "s-",
            color="tab:orange",
            label="PPO vs weak proxy: rm_weak reward",
        )
    for kinds, (marker, color, label) in POLICY_STYLES.items():
        runs = [(n, e) for n, e in results["policies"].items() if e.get("kind") in kinds]
        for name, entry in runs:
            d = _sqrt(entry["kl"]["mean"])
            gold = entry["gold"]
            gold_axis.errorbar(
                [d],
                [-gold["mean"]],
                yerr=[[gold["ci"][1] - gold["mean"]], [gold["mean"] - gold["ci"][0]]],
                fmt=marker,
                color=color,
                markersize=7,
            )
            gold_axis.annotate(name, (d, -gold["mean"]), fontsize=6, xytext=(4, 4), textcoords="offset points")
            proxy_axis.plot([d], [entry["proxy_reward"]["rm"]["mean"]], marker, color=color)
        if runs:
            gold_axis.plot([], [], marker, color=color, label=label)
            proxy_axis.plot([], [], marker, color=color, label=f"{label}: rm reward")
    sft = results["policies"]["sft"]
    gold_axis.axhline(-sft["gold"]["mean"], color="black", linewidth=0.8, linestyle=":", label="SFT")
    gold_axis.set(
        xlabel="sqrt(KL to SFT) (sqrt nats)",
        ylabel=f"gold reward (-{results.get('gold_label', results['gold_scorer'])})",
        title="gold reward against sqrt(KL)",
    )
    proxy_axis.set(
        xlabel="sqrt(KL to SFT) (sqrt nats)",
        ylabel="proxy reward (the reward model it optimises)",
        title="proxy reward against sqrt(KL)",
    )
    for axis in (gold_axis, proxy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(
        f"{results['task']}: over-optimisation (Gao et al. 2022), {results['settings']['eval_prompts']} "
        "held-out prompts",
        fontsize=10,
    )
    _save(figure, path)


def plot_win_rate_vs_kl(results: dict, path: Path) -> None:
    """Gold win rate against SFT (95% interval) against sqrt(KL to SFT), for every policy."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))

    def points(entries, style, color, label):
        x = [_sqrt(e["kl"]["mean"]) for e in entries]  # sqrt(KL), as Gao et al. plot it: one axis for 1 to 300 nats
        y = [e["win_rate"]["win_rate"] for e in entries]
        err = [
            [v - e["win_rate"]["ci"][0] for v, e in zip(y, entries)],
            [e["win_rate"]["ci"][1] - v for v, e in zip(y, entries)],
        ]
        axis.errorbar(x, y, yerr=err, fmt=style, color=color, label=label, capsize=2)

    for proxy, entries in results["best_of_n"].items():
        points(
            [e for e in entries if e["n"] > 1],
            "o--",
            "tab:red" if proxy == "rm_weak" else "tab:blue",
            f"best-of-n vs {proxy}",
        )
    if results.get("overoptimisation"):
        points(results["overoptimisation"], "s-", "tab:orange", "PPO vs weak proxy (over iterations)")
    for kinds, (marker, color, label) in POLICY_STYLES.items():
        runs = [e for e in results["policies"].values() if e.get("kind") in kinds]
        if runs:
            points(runs, marker, color, label)
    axis.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    axis.set(
        xlabel="sqrt(KL to SFT) (sqrt nats per response)",
        ylabel="win rate against SFT (gold judge, ties half)",
        title=f"{results['task']}: gold win rate against SFT",
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    _save(figure, path)


def plot_alignment_tax(results: dict, path: Path) -> None:
    """Held-out pretraining loss (the alignment tax) against gold misalignment: pretrained, SFT, PPO, PPO-ptx."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for name, entry in results["policies"].items():
        if entry.get("heldout") is None:
            continue
        x, y = entry["heldout"]["loss_per_token"], entry["gold"]["mean"]
        axis.errorbar(
            [x],
            [y],
            yerr=[[y - entry["gold"]["ci"][0]], [entry["gold"]["ci"][1] - y]],
            fmt="o",
            capsize=2,
            color={"ppo_ptx": "tab:purple", "ppo": "tab:green"}.get(entry.get("kind"), "black"),
        )
        axis.annotate(name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axis.set(
        xlabel="held-out corpus loss (nats/token): the alignment tax",
        ylabel=f"gold {results.get('gold_label', results['gold_scorer'])} (lower is better)",
        title=f"{results['task']}: alignment tax, PPO vs PPO-ptx",
    )
    axis.grid(alpha=0.3)
    _save(figure, path)
