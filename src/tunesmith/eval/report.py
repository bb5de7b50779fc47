"""Report files: report.json, report.md, predictions.jsonl and a bar chart."""

from __future__ import annotations

from pathlib import Path

from tunesmith.io_utils import atomic_file, write_json, write_jsonl


def markdown(report: dict) -> str:
    metrics = report["metrics"]
    lines = [f"# {report['title']}", ""]
    if "verdict" in report:
        lines += [f"**Verdict:** {report['verdict']}", ""]
    lines += ["| system | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, entry in report["systems"].items():
        cells = [f"{entry[m]:.3f} [{entry[m + '_ci95'][0]:.2f}, {entry[m + '_ci95'][1]:.2f}]" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"n = {report['n_examples']} held-out examples; brackets are 95% intervals "
              "(Wilson for 0/1 scores, bootstrap otherwise).", ""]
    gen = report["generation"]
    lines.append("Generation: " + ", ".join(f"{k}={v}" for k, v in gen.items()))
    if "training" in report:
        t = report["training"]
        lines += ["", "## Training", ""]
        for key in ("steps", "first_loss", "final_loss", "best_val_loss", "best_step", "tokens_per_s", "packing_efficiency"):
            if t.get(key) is not None:
                value = t[key]
                lines.append(f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}")
    if "overfitting" in report:
        o = report["overfitting"]
        flag = "**possible overfitting**" if o["flagged"] else "no overfitting flag"
        lines += ["", f"Train/validation gap: {o['gap']:+.3f} nats ({flag}; threshold {o['threshold']})."]
    return "\n".join(lines) + "\n"


def bar_chart(report: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    primary = report["primary_metric"]
    names = list(report["systems"])
    values = [report["systems"][n][primary] for n in names]
    # max(0, .) because interval ends can sit a rounding error past the point estimate.
    lo = [max(0.0, v - report["systems"][n][primary + "_ci95"][0]) for n, v in zip(names, values)]
    hi = [max(0.0, report["systems"][n][primary + "_ci95"][1] - v) for n, v in zip(names, values)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, values, yerr=[lo, hi], capsize=6, color=["#9aa5b1"] * (len(names) - 1) + ["#2f80ed"])
    ax.set_ylabel(primary)
    ax.set_ylim(0, max(1.0, max(values) * 1.1))
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
