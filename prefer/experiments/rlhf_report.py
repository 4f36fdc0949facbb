"""Tables and figures of `prefer rlhf`: results.{md,csv,json}, overoptimisation.png, win_rate.png, alignment_tax.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from prefer.evaluation.policy import gold_difference
from prefer.figures import (
    plot_alignment_tax,
    plot_overoptimisation,
    plot_win_rate_vs_kl,
)
from prefer.files import write_json_atomic, write_text_atomic


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _ci(value: dict | None, fmt: str) -> str:
    if value is None:
        return "-"
    return f"{value['mean']:{fmt}} [{value['ci'][0]:{fmt}}, {value['ci'][1]:{fmt}}]"


def _win(value: dict | None) -> str:
    if value is None:
        return "(baseline)"
    return f"{100 * value['win_rate']:.1f}% [{100 * value['ci'][0]:.1f}, {100 * value['ci'][1]:.1f}]"


def decisive_win_rate(value: dict | None) -> float | None:
    """Wins among the comparisons that are not ties: with win rate w (ties half) and tie share t, the wins are
    w - t/2 of all comparisons, so wins / (wins + losses) = (w - t/2) / (1 - t)."""
    if value is None or value["ties"] >= 1:
        return None
    return (value["win_rate"] - value["ties"] / 2) / (1 - value["ties"])


def _ties(value: dict | None) -> str:
    return "-" if value is None else f"{100 * value['ties']:.0f}%"


def _decisive(value: dict | None) -> str:
    rate = decisive_win_rate(value)
    return "-" if rate is None else f"{100 * rate:.1f}%"


def policy_rows(results: dict):
    """(label, entry) per table row: the policies, then best-of-n against each proxy."""
    for name, entry in results["policies"].items():
        yield name, entry
    for proxy, entries in results["best_of_n"].items():
        for entry in entries:
            if entry["n"] > 1:
                yield f"best-of-{entry['n']} ({proxy})", entry


def format_tables(results: dict) -> str:
    proxies = list(next(iter(results["policies"].values()))["proxy_reward"])
    sft_gold = results["policies"]["sft"].get("per_sample_gold")
    head = [
        "policy",
        f"gold {results.get('gold_label', results['gold_scorer'])} [95% CI]",
        "gold - SFT [95% CI]",
        *[f"{p} reward" for p in proxies],
        "KL to SFT (nats)",
        "win rate vs SFT (gold)",
        "ties",
        "wins w/o ties",
        "chars",
        "ended",
        "distinct-2",
        "held-out loss",
    ]
    lines = [_row(head), "|" + "---|" * len(head)]
    for label, entry in policy_rows(results):
        heldout = entry.get("heldout")
        difference = "-"
        if label != "sft" and sft_gold is not None and entry.get("per_sample_gold") is not None:
            difference = _ci(gold_difference(entry["per_sample_gold"], sft_gold, entry["prompts"]), ".2g")
        lines.append(
            _row(
                [
                    label,
                    _ci(entry["gold"], ".3g"),
                    difference,
                    *[f"{entry['proxy_reward'][p]['mean']:+.3f}" for p in proxies],
                    "-" if entry.get("kl") is None else f"{entry['kl']['mean']:.2f}",
                    _win(entry.get("win_rate")),
                    _ties(entry.get("win_rate")),
                    _decisive(entry.get("win_rate")),
                    f"{entry['response_chars']:.0f}",
                    f"{100 * entry['ended']:.0f}%",
                    f"{entry['distinct_2']:.3f}",
                    "-" if heldout is None else f"{heldout['loss_per_token']:.3f}",
                ]
            )
        )
    s = results["settings"]
    lines.append(
        f"\n{s['eval_prompts']} held-out prompts x {s['eval_samples']} sample(s) per policy at temperature "
        f"{s['eval_temperature']:g}, at most {s.get('eval_max_new_tokens', s['label_max_new_tokens'])} new tokens; "
        "gold = "
        f"{results.get('gold_label', results['gold_scorer'])} misalignment of prompt + response (lower is better), "
        "mean over prompts "
        "with a 95% bootstrap interval; rewards = -misalignment under each reward model; KL = "
        "log pi/pi_SFT summed over the response on the policy's own samples (best-of-n: log n - (n-1)/n); win "
        "rate = share of prompts where the gold scorer prefers the policy's response to the SFT model's, ties "
        "half (ties: both equally good, e.g. both free of PII and long enough; wins w/o ties = wins / "
        "(wins + losses)); held-out loss = nats per token of held-out corpus text (the alignment tax). "
        "Best-of-n rows "
        "select among SFT samples by the named proxy."
    )
    rm = results["reward_models"]
    rm_lines = ["", "| reward model | trained on | held-out accuracy vs gold ranking | pairs |", "|---|---|---|---|"]
    trained = {
        "rm": f"{rm['rankings'] - rm['heldout_rankings']} rankings (clean)",
        "rm_weak": f"{rm['weak_rankings']} rankings (clean; the weak proxy)",
    }
    if "noise" in rm:
        trained["rm_noisy"] = (
            f"{rm['rankings'] - rm['heldout_rankings']} rankings, noisy labelers agreeing "
            f"{100 * rm['noise']['agreement']:.1f}% (sigma {rm['noise']['sigma']:.3g})"
        )
    for name, what in trained.items():
        if name in rm:
            rm_lines.append(_row([name, what, f"{rm[name]['heldout_gold_accuracy']:.3f}", rm[name]["heldout_pairs"]]))
    lines += rm_lines
    lines += round_lines(results)
    lines += method_lines(results)
    sft = results["sft_candidates"]
    lines += [
        "",
        "SFT checkpoint by reward-model score on the validation prompts: "
        + ", ".join(f"{e} epochs {c['rm_reward']:+.3f} (gold {c['gold']:.3g})" for e, c in sft.items())
        + f"; chosen: {results['sft_chosen_epochs']} epochs.",
    ]
    return "\n".join(lines)


def round_lines(results: dict) -> list[str]:
    """The collection rounds' table (none without later rounds): each round's reward model against round 1's on
    the held-out rankings of the policy samples it was collected for, and its PPO policy by the gold judge."""
    rounds = results.get("rounds") or []
    if not rounds:
        return []
    first = results["policies"][rounds[0]["responses_from"]]
    lines = [
        "",
        "| round | responses ranked | training rankings (all rounds) | RM accuracy on this round's held-out: "
        "round-1 RM / this round's | on round 1's held-out: round-1 RM / this round's | PPO policy | gold [95% CI] "
        "| win rate vs SFT |",
        "|---|---|---|---|---|---|---|---|",
        _row(
            [
                1,
                "the starting model's",
                results["reward_models"]["rankings"] - results["reward_models"]["heldout_rankings"],
                "-",
                "-",
                rounds[0]["responses_from"],
                _ci(first["gold"], ".3g"),
                _win(first.get("win_rate")),
            ]
        ),
    ]
    for entry in rounds:
        number = entry["round"]
        accuracy = entry["reward_model_accuracy"]
        mine, theirs = accuracy[f"round{number}_heldout"], accuracy["round1_heldout"]
        policy = results["policies"][entry["policy"]]
        lines.append(
            _row(
                [
                    number,
                    f"{entry['responses_from']}'s",
                    entry["training_rankings"],
                    f"{mine['rm_round1']['accuracy']:.3f} / {mine[f'rm_round{number}']['accuracy']:.3f} "
                    f"({mine['rm_round1']['pairs']} pairs)",
                    f"{theirs['rm_round1']['accuracy']:.3f} / {theirs[f'rm_round{number}']['accuracy']:.3f}",
                    entry["policy"],
                    _ci(policy["gold"], ".3g"),
                    _win(policy.get("win_rate")),
                ]
            )
        )
    return lines


def _setting(entry: dict) -> str:
    if entry.get("kind") in ("dpo", "listwise"):
        return f"beta {entry['beta']:g}, K = {entry['K']}"
    if entry.get("kind") == "ipo":
        return f"tau {entry['beta']:g}, K = {entry['K']}"
    if entry.get("kind") == "kto":
        return f"beta {entry['beta']:g}, binary labels of K = {entry['K']} samples"
    text = f"KL coef {entry['kl_coef']:g}" if "kl_coef" in entry else ""
    return text + (f", ptx coef {entry['ptx_coef']:g}" if "ptx_coef" in entry else "")


def method_lines(results: dict) -> list[str]:
    """The trained policies' settings and training wall time (this machine; the run that trained each)."""
    trained = [(n, e) for n, e in results["policies"].items() if "train_seconds" in e]
    if not trained:
        return []
    lines = [
        "",
        "| policy | method | setting | training wall time | implicit-reward accuracy (held-out rankings) |",
        "|---|---|---|---|---|",
    ]
    for name, entry in trained:
        accuracy = entry.get("implicit_reward_accuracy")
        lines.append(
            _row(
                [
                    name,
                    entry["kind"],
                    _setting(entry),
                    "-" if entry["train_seconds"] is None else f"{entry['train_seconds'] / 60:.1f} min",
                    "-" if accuracy is None else f"{accuracy:.3f}",
                ]
            )
        )
    return lines


def format_csv(results: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    proxies = list(next(iter(results["policies"].values()))["proxy_reward"])
    writer.writerow(
        [
            "policy",
            "gold_mean",
            "gold_ci_low",
            "gold_ci_high",
            *[f"{p}_reward" for p in proxies],
            "kl",
            "win_rate",
            "win_ci_low",
            "win_ci_high",
            "ties",
            "wins_without_ties",
            "response_chars",
            "ended",
            "distinct_1",
            "distinct_2",
            "heldout_loss_per_token",
        ]
    )
    for label, e in policy_rows(results):
        win = e.get("win_rate") or {}
        writer.writerow(
            [
                label,
                e["gold"]["mean"],
                *e["gold"]["ci"],
                *[e["proxy_reward"][p]["mean"] for p in proxies],
                None if e.get("kl") is None else e["kl"]["mean"],
                win.get("win_rate"),
                *(win.get("ci") or [None, None]),
                win.get("ties"),
                decisive_win_rate(e.get("win_rate")),
                e["response_chars"],
                e["ended"],
                e["distinct_1"],
                e["distinct_2"],
                (e.get("heldout") or {}).get("loss_per_token"),
            ]
        )
    return buffer.getvalue()


def write_results(results: dict, out: Path) -> str:
    text = format_tables(results)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.csv", format_csv(results))
    write_text_atomic(out / "results.md", text + "\n")
    plot_overoptimisation(results, out / "overoptimisation.png")
    plot_win_rate_vs_kl(results, out / "win_rate.png")
    plot_alignment_tax(results, out / "alignment_tax.png")
    return text
