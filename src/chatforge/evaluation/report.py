"""Evaluation reports: `report.json` (everything), `report.md` (tables + examples of each error kind), PNG bar charts,
and the side-by-side comparison of several runs (`chatforge eval compare`).

Scales: BLEU and ROUGE are 0-100; rates, accuracies and precision/recall/F1 are fractions 0-1 in the JSON and shown
as percentages in the markdown and the charts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatforge.errors import ChatforgeError

# Metrics shown as percentages (the others, e.g. BLEU, ROUGE, loss and perplexity, are shown as they are).
_ZERO_TO_100 = ("bleu4", "rouge1", "rouge2", "rougeL", "text_bleu4")


# Metrics that are fractions in [0, 1] (shown as percentages), recognised by name.
_FRACTION_WORDS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "exact_match",
    "contains",
    "rate",
    "ci_low",
    "ci_high",
    "chance",
    "acc",
    "pass@",
    "subject_mean",
)


def _is_fraction(name: str) -> bool:
    return any(word in name for word in _FRACTION_WORDS)


def _fmt(name: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    if value != value:  # NaN
        return "n/a"
    if name in ("loss", "perplexity") or name.endswith("_seconds"):
        return f"{value:.3f}"
    if name in _ZERO_TO_100:
        return f"{value:.2f}"
    if isinstance(value, float) and _is_fraction(name):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _short(value: Any, limit: int = 240) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def bar_chart(path: Path, title: str, groups: dict[str, dict[str, float]], ylabel: str = "score (0-100)") -> Path:
    """Grouped bars: one group per metric, one bar per run (a single run is one bar per metric)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(m for run in groups.values() for m in run))
    runs = list(groups)
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(metrics) * max(1, len(runs) / 2) + 1.5), 3.6))
    for k, run in enumerate(runs):
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(metrics))]
        vals = [groups[run].get(m, 0.0) for m in metrics]
        bars = ax.bar(xs, vals, width, label=run)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(100.0, max((v for r in groups.values() for v in r.values()), default=0) * 1.15))
    ax.set_title(title)
    if len(runs) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chart_values(metrics: dict[str, float], scales: dict[str, float]) -> dict[str, float]:
    return {m: float(metrics[m]) * s for m, s in scales.items() if m in metrics and metrics[m] == metrics[m]}


def _confusion_lines(name: str, c: dict[str, dict[str, int]]) -> list[str]:
    """Grounded QA: what the model did with answerable and unanswerable questions, as counts."""
    a, u = c.get("answerable", {}), c.get("unanswerable", {})
    title = "Confusion matrix" if name == "confusion" else "Confusion matrix of the greedy replies (uncalibrated)"
    return [
        "",
        f"{title}:",
        "",
        "| question | answered correctly | answered wrong | refused |",
        "|---|---|---|---|",
        f"| answerable | {a.get('answered_correct', 0)} | {a.get('answered_wrong', 0)} | {a.get('refused', 0)} |",
        f"| unanswerable | - | {u.get('answered', 0)} (answered) | {u.get('refused', 0)} |",
    ]


def _curve_lines(curve: list[dict[str, Any]]) -> list[str]:
    """Calibrated abstention: refusal recall against false-refusal rate at several fitted thresholds."""
    lines = ["", "Trade-off (thresholds fitted on these items to each target):", ""]
    lines += ["| target false refusal | threshold | false refusal | refusal recall | refusal precision |"]
    lines += ["|---|---|---|---|---|"]
    for row in curve:
        t = row["threshold"]
        t = f"{t:.3f}" if isinstance(t, (int, float)) else str(t)
        lines.append(
            f"| {100 * row['target_false_refusal']:.0f}% | {t} | {100 * row['false_refusal_rate']:.1f}% | "
            f"{100 * row['refusal_recall']:.1f}% | {100 * row['refusal_precision']:.1f}% |"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [f"# Evaluation: {run['model']}" + (f" + {run['adapter']}" if run.get("adapter") else ""), ""]
    lines += [f"- template: `{run['template']}`; data: {', '.join(f'`{d}`' for d in run['data'])}"]
    lines += [f"- started {run['started']}, took {run['seconds']:.1f} s; chatforge {run['version']}", ""]
    lines += ["Scales: BLEU/ROUGE 0-100; rates, accuracies and P/R/F1 in percent.", ""]
    for name, task in report["tasks"].items():
        lines += [f"## {name} ({task['items']} items, {task['seconds']:.1f} s)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(k, v)} |" for k, v in task["metrics"].items()]
        flat = {k: v for k, v in task["details"].items() if not isinstance(v, (dict, list))}
        if flat:
            lines += ["", "Details: " + ", ".join(f"{k} {_fmt(k, v)}" for k, v in flat.items())]
        for k, v in task["details"].items():
            if k == "per_subject" and isinstance(v, dict):
                names = list(dict.fromkeys(m for row in v.values() for m in row if m != "n"))
                lines += ["", "| subject | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
                for subj, row in v.items():
                    cells = " | ".join(_fmt(m, row.get(m, float("nan"))) for m in names)
                    lines.append(f"| {subj} | {row['n']} | {cells} |")
                continue
            if k in ("confusion", "greedy_confusion") and isinstance(v, dict):  # grounded QA (issue 21)
                lines += _confusion_lines(k, v)
                continue
            if k == "curve" and isinstance(v, list) and v:
                lines += _curve_lines(v)
                continue
            if isinstance(v, dict):
                lines += [f"- {k}: " + ", ".join(f"{kk} {_fmt(kk, vv)}" for kk, vv in v.items())]
        if task.get("chart"):
            lines += ["", f"![{name}]({task['chart']})"]
        for kind, rows in task["examples"].items():
            if not rows:
                continue
            lines += ["", f"### {kind.replace('_', ' ')} (showing {len(rows)})", ""]
            for row in rows:
                shown = {k: v for k, v in row.items() if k not in ("raw", "per_example")}
                lines.append("- " + "; ".join(f"**{k}**: {_short(v, 200)}" for k, v in shown.items()))
        lines.append("")
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict[str, Any], charts: bool = True) -> dict[str, Path]:
    """Write report.json, report.md and (optionally) one PNG chart per task; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if charts:
        for name, task in report["tasks"].items():
            values = chart_values(task["metrics"], task.get("chart_scales", {}))
            if values:
                path = bar_chart(out_dir / f"chart_{name}.png", f"{name}: {report['run']['label']}", {"run": values})
                task["chart"] = path.name
                written[f"chart_{name}"] = path
    (out_dir / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    written["json"], written["md"] = out_dir / "report.json", out_dir / "report.md"
    return written


# ---------------------------------------------------------------------------------------------------------- compare


def load_report(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir)
    path = path if path.suffix == ".json" else path / "report.json"
    if not path.is_file():
        raise ChatforgeError(f"{path}: no report.json here; pass folders written by `chatforge eval`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ChatforgeError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def compare(run_dirs: list[str | Path], out_dir: str | Path) -> tuple[str, list[Path]]:
    """Side-by-side markdown table of every task metric over runs, plus one grouped bar chart per task."""
    if len(run_dirs) < 1:
        raise ChatforgeError("compare needs at least one run folder")
    reports = [load_report(d) for d in run_dirs]
    labels, seen = [], set()
    for d, rep in zip(run_dirs, reports):
        label = rep["run"].get("label") or Path(d).name
        label = label if label not in seen else f"{label} ({Path(d).name})"
        seen.add(label)
        labels.append(label)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Comparison", "", "| run | folder |", "|---|---|"]
    lines += [f"| {lab} | `{d}` |" for lab, d in zip(labels, run_dirs)]
    charts: list[Path] = []
    tasks = list(dict.fromkeys(t for rep in reports for t in rep["tasks"]))
    for task in tasks:
        present = [(lab, rep["tasks"][task]) for lab, rep in zip(labels, reports) if task in rep["tasks"]]
        metrics = list(dict.fromkeys(m for _, t in present for m in t["metrics"]))
        lines += ["", f"## {task}", "", "| metric | " + " | ".join(lab for lab, _ in present) + " |"]
        lines += ["|---|" + "---|" * len(present)]
        for m in metrics:
            lines.append(
                f"| {m} | " + " | ".join(_fmt(m, t["metrics"].get(m, float("nan"))) for _, t in present) + " |"
            )
        lines.append("| items | " + " | ".join(str(t["items"]) for _, t in present) + " |")
        groups = {lab: chart_values(t["metrics"], t.get("chart_scales", {})) for lab, t in present}
        if any(groups.values()):
            path = bar_chart(out / f"compare_{task}.png", task, groups)
            charts.append(path)
            lines += ["", f"![{task}]({path.name})"]
    text = "\n".join(lines) + "\n"
    (out / "compare.md").write_text(text, encoding="utf-8")
    return text, charts
