"""report.md, report.json and report.png of `tunesmith decide`; the Markdown is drawn from the JSON alone."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.self_answers import HELP as FORGETTING_HELP
from tunesmith.io_utils import atomic_file, write_json


def _n(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def _volume(v) -> str:
    return "never (the fine-tune is not cheaper per request)" if v is None else f"{v:,.0f} requests"


def markdown(r: dict) -> str:
    rec, metric = r["recommendation"], r["metric"]
    money = any(s["money_per_1k_requests"] is not None for s in r["systems"].values())
    lines = [f"# {r['title']}", "", f"**Recommendation:** {rec['reason']}.", "",
             f"{r['n_train']} training / {r['n_test']} test examples; model {r['model']}; quality is {metric} "
             f"({'higher' if r['higher_is_better'] else 'lower'} is better) with its 95 % interval; latency and cost "
             "from test requests answered one at a time; CPU: " + r["machine"]["cpu"] + ".", "",
             "| system | " + metric + " [95 % CI] | p50 / p95 latency (s) | prompt + completion tokens / request "
             "| prompt tokens added | CPU-s / 1k requests | " + ("money / 1k requests | " if money else "")
             + "one-time training |",
             "|---|---|---|---|---|---|" + ("---|" if money else "") + "---|"]
    for s in r["systems"].values():
        lo, hi = s["quality_ci95"]
        one_time = f"{_n(s['one_time_cpu_s'], 1)} CPU-s" if s["one_time_cpu_s"] else "-"
        if s["one_time_money"]:
            one_time += f" ({_n(s['one_time_money'], 4)})"
        lines.append(f"| {s['label']} | {_n(s['quality'])} [{_n(lo)}, {_n(hi)}] | {_n(s['latency_p50_s'], 2)} / "
                     f"{_n(s['latency_p95_s'], 2)} | {_n(s['prompt_tokens_per_request'], 1)} + "
                     f"{_n(s['completion_tokens_per_request'], 1)} | {s['prompt_tokens_added']:+.1f} | "
                     f"{_n(s['cpu_s_per_1k_requests'], 1)} | " + (f"{_n(s['money_per_1k_requests'], 4)} | " if money else "")
                     + f"{one_time} |")
    b, t = r["break_even"], r["training"]
    lines += ["", f"Paired comparison: {r['comparison']['sentence']}."]
    if "teacher" in r:
        lines += ["", f"Teacher: {r['teacher']['sentence']}."]
    lines += ["",
              f"Fine-tune: {t['steps']} LoRA steps ({t['plan']['step_s']:.2f} s each, measured) on {t['examples']} "
              f"examples: {_n(t['cpu_s'], 1)} CPU-s, {_n(t['wall_s'], 1)} s wall, {_n(t['tokens'], 0)} tokens trained on.",
              f"Break-even against {b['against'].removeprefix('base_').replace('_', '-')}: "
              f"{_volume(b['requests_cpu'])} in CPU time"
              + (f"; {_volume(b['requests_money'])} in money" if "requests_money" in b else "") + "."]
    if len(r["learning_curve"]) > 1:
        lines += ["", "## Learning curve", "", f"| share of training data | examples | steps | {metric} [95 % CI] |",
                  "|---|---|---|---|"]
        for p in r["learning_curve"]:
            lines.append(f"| {p['fraction']:.0%} | {p['examples']} | {p['steps']} | {_n(p['quality'])} "
                         f"[{_n(p['quality_ci95'][0])}, {_n(p['quality_ci95'][1])}] |")
        lines += ["", learning_curve_sentence(r)]
    lines += ["", "## Pitfalls", ""] + pitfall_lines(r["pitfalls"])
    w = r["wall_s"]
    lines += ["", f"Whole run: {w['total'] / 60:.1f} min wall (" + ", ".join(
        f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in w.items() if k != "total") + ")."]
    return "\n".join(lines) + "\n"


def learning_curve_sentence(r: dict) -> str:
    """What the curve says about more data. A rise counts as one only when the smaller run's score lies
    outside the larger run's 95 % interval: with 60 test examples a +0.02 step is noise."""
    sign = 1 if r["higher_is_better"] else -1
    curve = r["learning_curve"]
    gains = [sign * (b["quality"] - a["quality"]) for a, b in zip(curve, curve[1:])]
    steps = ", ".join(f"{g:+.3f}" for g in gains)
    last, before = curve[-1], curve[-2]
    lo, hi = last["quality_ci95"]
    clear = gains[-1] > 0 and not lo <= before["quality"] <= hi
    if all(g > 0 for g in gains) and clear:
        return f"Quality rises at every step of the curve ({steps}), the last one beyond its interval: more data would likely help."
    if gains[-1] > 0:
        return (f"Quality rises ({steps}), but the last step is inside the full-data interval "
                f"[{_n(lo)}, {_n(hi)}]: the curve is flattening, and more of the same data would likely help little.")
    return f"Quality does not rise with the last share of the data ({steps}): more of the same data is unlikely to help much."


def pitfall_lines(p: dict) -> list[str]:
    out = []
    o = p.get("overfitting") or {}
    if "gap" in o:
        word = "**flagged**" if o["flagged"] else "ok"
        out.append(f"- Train/validation gap: {o['gap']:+.3f} nats at step {o['step']} ({word}; threshold {o['threshold']}).")
    elif o:
        out.append(f"- Train/validation gap: not measured ({o.get('skipped')}).")
    f = p.get("forgetting") or {}
    if "flagged" in f:
        word = "**flagged**: " + "; ".join(f.get("reasons", [])) if f["flagged"] else "ok"
        out.append(f"- General-skill regression (forgetting) on the shipped general set: {word}."
                   + (f" {FORGETTING_HELP}" if f["flagged"] else ""))
        out += [f"  Note: {n}." for n in f.get("notes", [])]
    elif f:
        out.append(f"- General-skill regression: not measured ({f.get('skipped', 'off')}).")
    else:
        out.append("- General-skill regression (forgetting): not checked (--no-regression).")
    leak = p["leakage"]
    word = "**flagged**" if leak["flagged"] else "ok"
    out.append(f"- Train/test near-duplicates (MinHash, Jaccard >= {leak['threshold']}): {leak['near_duplicates']} of "
               f"{leak['test_examples']} test examples ({word})" + (f", e.g. {', '.join(leak['examples'][:3])}" if leak["examples"] else "") + ".")
    if p["data_size"]["flagged"]:
        out.append(f"- Only {p['data_size']['train_examples']} training examples: fine-tunes usually want hundreds "
                   "to thousands of curated examples.")
    if p["test_size"]["flagged"]:
        out.append(f"- Only {p['test_size']['test_examples']} test examples: every interval above is wide.")
    return out


def plot(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["label"] for s in r["systems"].values()]
    values = [s["quality"] for s in r["systems"].values()]
    lo = [max(0.0, v - s["quality_ci95"][0]) for v, s in zip(values, r["systems"].values())]
    hi = [max(0.0, s["quality_ci95"][1] - v) for v, s in zip(values, r["systems"].values())]
    colours = ["#2f80ed" if n == "fine-tune" else "#9aa5b1" for n in names]
    panels = 3 if len(r["learning_curve"]) > 1 else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    axes[0].bar(names, values, yerr=[lo, hi], capsize=5, color=colours)
    axes[0].set_ylabel(r["metric"])
    axes[0].set_title(f"quality, 95 % CI (n={r['n_test']})")
    # A teacher's compute happens elsewhere: no bar (0) rather than a made-up figure.
    axes[1].bar(names, [s["cpu_s_per_1k_requests"] or 0.0 for s in r["systems"].values()], color=colours)
    axes[1].set_ylabel("CPU-seconds per 1,000 requests")
    axes[1].set_title("serving cost")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelrotation=30)
    if panels == 3:
        pts = r["learning_curve"]
        axes[2].errorbar([p["examples"] for p in pts], [p["quality"] for p in pts],
                         yerr=[[max(0.0, p["quality"] - p["quality_ci95"][0]) for p in pts],
                               [max(0.0, p["quality_ci95"][1] - p["quality"]) for p in pts]], marker="o", capsize=4)
        axes[2].set_ylim(0, max(1.0, max(p["quality_ci95"][1] for p in pts) * 1.05))
        axes[2].set_xlabel("training examples")
        axes[2].set_ylabel(r["metric"])
        axes[2].set_title("fine-tune learning curve")
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def write_decide_report(out_dir: Path, report: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", report)
    with atomic_file(out_dir / "report.md") as fh:
        fh.write(markdown(report))
    plot(report, out_dir / "report.png")
