"""`prefer report RUN_DIR...`: one static, self-contained HTML file a person reads in any browser, offline.

Each directory contributes what it holds:
- an experiment (`results.json` with models): the table, the Pareto and misalignment-over-tokens figures, and
  sample excerpts side by side, with a switch that shows or hides the control tokens the models wrote;
- a red-teaming run (`redteam.json`): its summary and curve;
- a PPO run (`metrics.jsonl` with `reward/proxy`): reward, gold reward, KL and PPO-ptx loss over episodes;
- any other training run (`metrics.jsonl`): its learning curve.
Figures are embedded as base64 PNG, so the file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

from prefer.errors import PreferError
from prefer.files import write_text_atomic
from prefer.run_dir import read_metrics

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: 1em 0; }
th, td { border: 1px solid #ddd; padding: .3em .5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
img.figure { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.samples { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 1em; }
.samples pre { white-space: pre-wrap; font-size: .78em; background: #fafafa; border: 1px solid #eee;
               padding: .5em; margin: .3em 0; max-height: 14em; overflow: auto; }
.control { background: #ffe08a; border-radius: 3px; }
body:not(.show-controls) .with-controls { display: none; }
body.show-controls .plain { display: none; }
.note { color: #666; font-size: .85em; }
"""

# After every image has loaded (or failed), the body records how many decoded, for people and for the test that
# renders this page in a headless browser.
SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures', images.length);
  document.body.setAttribute('data-figures-loaded', loaded);
});
function toggleControls(box) { document.body.classList.toggle('show-controls', box.checked); }
"""


def _figure(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="figure" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure_file(path: Path, alt: str) -> str:
    return _figure(path.read_bytes(), alt) if path.exists() else f'<p class="note">({path.name} missing)</p>'


def markdown_table(markdown: str) -> str:
    """Our results.md: each pipe table (with the paragraph after it) as an HTML table."""
    out, rows, notes = [], [], []

    def flush() -> None:
        if rows:
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if notes:
            out.append(f'<p class="note">{" ".join(notes)}</p>')
        rows.clear()
        notes.clear()

    for line in markdown.strip().splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            if notes:  # a new table starts after the previous one's paragraph
                flush()
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])  # escaped pipes stay inside their cell
            rows.append([html.escape(cell.strip().replace("\\|", "|").replace("`", "")) for cell in cells])
        elif line.strip():
            notes.append(html.escape(line.strip()))
    flush()
    return "".join(out)


def _highlight_controls(text: str) -> str:
    escaped = html.escape(text)
    for tag in ("&lt;|good|&gt;", "&lt;|bad|&gt;"):
        escaped = escaped.replace(tag, f'<span class="control">{tag}</span>')
    return escaped


def _read_samples(path: Path, count: int) -> list[dict]:
    if not path.exists():
        return []
    samples = []
    for line in path.read_text().splitlines()[:count]:
        record = json.loads(line)
        samples.append({"text": record["text"], "with_controls": record.get("with_controls", record["text"])})
    return samples


def _samples_section(run_dir: Path, models: list[str], count: int) -> str:
    columns = []
    for name in models:
        for file, label in (("samples.jsonl", name), ("samples_bad.jsonl", f"{name}, prompted &lt;|bad|&gt;")):
            samples = _read_samples(run_dir / name / file, count)
            if not samples:
                continue
            blocks = "".join(
                f'<pre class="plain">{html.escape(s["text"])}</pre>'
                f'<pre class="with-controls">{_highlight_controls(s["with_controls"])}</pre>'
                for s in samples
            )
            columns.append(f"<div><h4>{label}</h4>{blocks}</div>")
    if not columns:
        return ""
    toggle = (
        '<label><input type="checkbox" onchange="toggleControls(this)"> show the control tokens the models '
        "wrote</label>"
    )
    return f"<h3>Samples (the first {count} of each model)</h3>{toggle}<div class='samples'>{''.join(columns)}</div>"


def experiment_section(run_dir: Path, samples_per_model: int) -> str:
    results = json.loads((run_dir / "results.json").read_text())
    models = list(results["models"])
    parts = [f"<h2>Experiment: {html.escape(results['task'])} task ({html.escape(str(run_dir))})</h2>"]
    table = run_dir / "results.md"
    if table.exists():
        parts.append(markdown_table(table.read_text()))
    parts.append(_figure_file(run_dir / "pareto.png", "misalignment vs capability, Pareto frontier"))
    parts.append(_figure_file(run_dir / "misalignment_vs_tokens.png", "misalignment over training tokens (log-log)"))
    if results.get("redteam"):
        parts.append(_figure_file(run_dir / "redteam.png", "red-teaming curves per model"))
    parts.append(_samples_section(run_dir, models, samples_per_model))
    return "\n".join(parts)


def _plot_series(metrics: list[dict], keys: list[str], x_key: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [{k: v for k, v in m.items() if v is not None} for m in metrics]  # null: a non-finite value
    keys = [k for k in keys if any(k in m for m in metrics)]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for axis, key in zip(axes[0], keys):
        points = [(m.get(x_key, m["step"]), m[key]) for m in metrics if key in m]
        axis.plot(*zip(*points), marker="." if len(points) < 50 else None)
        axis.set(title=key, xlabel=x_key)
        axis.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


PPO_KEYS = ["reward/proxy", "reward/gold", "kl", "ptx/heldout_loss", "response/length"]
PRETRAIN_KEYS = ["train/loss", "val/loss", "train/lr"]


def training_section(run_dir: Path) -> str:
    metrics = read_metrics(run_dir)
    if not metrics:
        return ""
    if any("reward/proxy" in m for m in metrics):
        title, keys, x_key = "PPO", PPO_KEYS, "episodes"
    else:
        title, keys, x_key = "training", PRETRAIN_KEYS, "tokens"
    png = _plot_series(metrics, keys, x_key, f"{title}: {run_dir}")
    return f"<h2>{title} run ({html.escape(str(run_dir))})</h2>{_figure(png, title + ' curves')}"


def redteam_section(run_dir: Path) -> str:
    summary = json.loads((run_dir / "redteam.json").read_text())
    shown = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in shown.items())
    return f"<h2>Red-teaming ({html.escape(str(run_dir))})</h2><table>{rows}</table>" + _figure_file(
        run_dir / "redteam.png", "red-teaming: best, top-10 mean and pool mean per round"
    )


def rlhf_section(run_dir: Path, results: dict, samples_per_model: int) -> str:
    """`prefer rlhf`: the table, the over-optimisation, win-rate and alignment-tax figures, sample responses."""
    title = (
        f"<h2>RLHF: {html.escape(results['task'])} task, "
        f"gold {html.escape(results.get('gold_label', results['gold_scorer']))} "
        f"({html.escape(str(run_dir))})</h2>"
    )
    parts = [title]
    table = run_dir / "results.md"
    if table.exists():
        parts.append(markdown_table(table.read_text()))
    for name, alt in (
        ("overoptimisation.png", "gold and proxy reward against sqrt(KL)"),
        ("win_rate.png", "gold win rate against SFT against KL"),
        ("alignment_tax.png", "held-out loss against gold score"),
    ):
        parts.append(_figure_file(run_dir / name, alt))
    columns = []
    for name, entry in results["policies"].items():
        blocks = "".join(
            f'<pre class="plain"><b>{html.escape(e["prompt"])}</b>{html.escape(e["response"])}</pre>'
            for e in entry.get("examples", [])[:samples_per_model]
        )
        if blocks:
            columns.append(f"<div><h4>{html.escape(name)}</h4>{blocks}</div>")
    if columns:
        parts.append(f"<h3>Responses to the first held-out prompts</h3><div class='samples'>{''.join(columns)}</div>")
    return "\n".join(parts)


def section(run_dir: Path, samples_per_model: int) -> str:
    """The part of the report for one directory, chosen by what it holds."""
    if (run_dir / "results.json").exists():
        results = json.loads((run_dir / "results.json").read_text())
        if "policies" in results:  # written by `prefer rlhf`
            return rlhf_section(run_dir, results, samples_per_model)
        return experiment_section(run_dir, samples_per_model)
    if (run_dir / "redteam.json").exists():
        return redteam_section(run_dir)
    if (run_dir / "metrics.jsonl").exists():
        return training_section(run_dir)
    raise PreferError(f"{run_dir}: no results.json (experiment), redteam.json or metrics.jsonl (training run) here")


def report(
    run_dirs: list[str | Path], *, out: str | Path, title: str = "prefer report", samples_per_model: int = 4
) -> Path:
    sections = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise PreferError(f"{run_dir}: not a directory")
        sections.append(section(run_dir, samples_per_model))
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
        + "\n".join(sections)
        + "</body></html>"
    )
    write_text_atomic(out, page)
    return Path(out)
