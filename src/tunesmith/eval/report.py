"""Report files: report.json, report.md, predictions.jsonl and a bar chart.

report.md is drawn from report.json alone, so a saved report renders again the same way; each
section adds its own lines (see eval/sections/base.py), in the registry's order.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.eval.sections import registered
from tunesmith.io_utils import atomic_file, write_json, write_jsonl


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def _systems_table(report: dict) -> list[str]:
    metrics = report["metrics"]
    lower = set(report.get("lower_is_better", []))
    head = [f"{m} (lower is better)" if m in lower else m for m in metrics]
    lines = ["| system | " + " | ".join(head) + " |", "|---|" + "---|" * len(metrics)]
    for name, entry in report["systems"].items():
        cells = []
        for m in metrics:
            if m not in entry:
                cells.append("-")
                continue
            lo, hi = entry[m + "_ci95"]
            cells.append(f"{_num(entry[m])} [{_num(lo)}, {_num(hi)}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _details(report: dict) -> list[str]:
    lines = []
    for system, per_metric in report.get("details", {}).items():
        for metric, d in per_metric.items():
            if "signature" in d:
                lines.append(f"- {system} {metric}: sacrebleu signature `{d['signature']}`")
            if "per_class" in d and metric == "macro_f1":
                lines += ["", f"Per class ({system}):", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
                for label, row in d["per_class"].items():
                    lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
                lines.append("")
    return ["", "## Metric details", "", *lines] if lines else []


def markdown(report: dict) -> str:
    lines = [f"# {report['title']}", ""]
    if "verdict" in report:
        lines += [f"**Verdict:** {report['verdict']}", ""]
    lines += _systems_table(report)
    lines += ["", f"n = {report['n_examples']} held-out examples; brackets are 95% intervals "
              "(Wilson for 0/1 scores, bootstrap otherwise; comparisons are paired bootstraps).", ""]
    if "baseline_weights" in report:
        lines.append(f"Base systems: {report['baseline_weights']['note']}.")
    sections = [cls() for cls in registered()]
    for section in sections:
        lines += section.notes(report)
    gen = report["generation"]
    lines.append("Generation: " + ", ".join(f"{k}={v}" for k, v in gen.items()))
    lines += _details(report)
    for section in sections:
        lines += section.markdown(report)
    if "training" in report:
        t = report["training"]
        lines += ["", "## Training", ""]
        for key in ("steps", "first_loss", "final_loss", "best_val_loss", "best_step", "tokens_per_s", "packing_efficiency"):
            if t.get(key) is not None:
                value = t[key]
                lines.append(f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}")
    if "overfitting" in report:
        o = report["overfitting"]
        if "skipped" in o:
            lines += ["", f"Overfitting check skipped: {o['skipped']}."]
        else:
            flag = "**possible overfitting**" if o["flagged"] else "no overfitting flag"
            lines += ["", f"Train/validation gap at step {o['step']}: {o['val_loss']:.3f} - {o['train_loss']:.3f} = "
                      f"{o['gap']:+.3f} nats ({flag}; threshold {o['threshold']})."]
    return "\n".join(lines) + "\n"


def bar_chart(report: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    primary = report["primary_metric"]
    if primary is None:
        return
    names = [n for n in report["systems"] if primary in report["systems"][n]]
    values = [report["systems"][n][primary] for n in names]
    # max(0, .) because interval ends can sit a rounding error past the point estimate.
    lo = [max(0.0, v - report["systems"][n][primary + "_ci95"][0]) for n, v in zip(names, values)]
    hi = [max(0.0, report["systems"][n][primary + "_ci95"][1] - v) for n, v in zip(names, values)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, values, yerr=[lo, hi], capsize=6, color=["#2f80ed" if n == "tuned" else "#9aa5b1" for n in names])
    ax.set_ylabel(primary + (" (lower is better)" if primary in report.get("lower_is_better", []) else ""))
    ax.set_ylim(0, max(1.0, max(v + h for v, h in zip(values, hi)) * 1.1))
    ax.set_title(f"{primary} on {report['n_examples']} held-out examples")
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def write_report(out_dir: Path, report: dict, prediction_rows: list[dict]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", report)
    with atomic_file(out_dir / "report.md") as fh:
        fh.write(markdown(report))
    write_jsonl(out_dir / "predictions.jsonl", prediction_rows)
    bar_chart(report, out_dir / "report.png")
