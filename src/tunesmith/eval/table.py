"""The systems table: every column folded into a value with its interval, comparisons and the verdict.

Every reported number is a *column*: a fold over per-example rows (see metrics.py), so each gets
a bootstrap or Wilson interval and every comparison is a paired bootstrap on the same examples.
Sections (eval/sections/) supply the columns; this module knows nothing about what they measure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.config import EvalConfig
from tunesmith.eval import stats
from tunesmith.eval.metrics import METRICS
from tunesmith.eval.overfitting import overfitting_check


@dataclass
class Column:
    name: str
    fold: Callable[[list], float]
    per_example: bool
    higher_is_better: bool = True
    details: Callable[[list], dict] | None = None


def metric_column(name: str) -> Column:
    m = METRICS[name]
    return Column(name, m.fold, m.per_example, True, m.details)


def _compare(rows_a: list, rows_b: list, col: Column, seed: int) -> tuple[float, tuple[float, float]]:
    if col.per_example:
        return stats.paired_difference(rows_a, rows_b, seed=seed)
    return stats.paired_fold_difference(rows_a, rows_b, col.fold, seed=seed)


def _comparison_entry(rows, systems, col: Column, candidate: str, other: str, n: int, seed: int,
                      label: str | None = None) -> dict:
    diff, ci = _compare(rows[candidate][col.name], rows[other][col.name], col, seed)
    better = ci[0] > 0 if col.higher_is_better else ci[1] < 0
    worse = ci[1] < 0 if col.higher_is_better else ci[0] > 0
    word = "beats" if better else "loses to" if worse else "is not distinguishable from"
    a, b = systems[candidate][col.name], systems[other][col.name]
    sentence = (f"{candidate} {word} {label or other} on {col.name}: {a:.3f} vs {b:.3f}, difference {diff:+.3f} "
                f"(95% CI {ci[0]:+.3f} to {ci[1]:+.3f}, n={n})")
    return {"system": candidate, "baseline": other, "metric": col.name, "difference": diff,
            "difference_ci95": list(ci), "result": word, "sentence": sentence}


def build_report(rows: dict[str, dict[str, list]], columns: dict[str, Column], cfg: EvalConfig, n: int,
                 training: dict | None, precision: str, title: str, baseline: dict | None = None,
                 train_log: list[dict] | None = None) -> dict:
    """The report's table part: per-system values and intervals, the verdict (the first column is the
    primary one), and with `training` the training summary and its overfitting check."""
    primary = next(iter(columns), None)
    systems: dict[str, dict] = {}
    details: dict[str, dict] = {}
    for name, per_col in rows.items():
        entry = {}
        for col_name, col in columns.items():
            values = per_col.get(col_name)
            if values is None:
                continue
            entry[col_name] = col.fold(values)
            if col.per_example:
                entry[f"{col_name}_ci95"] = list(stats.interval(values, seed=cfg.seed))
            else:
                entry[f"{col_name}_ci95"] = list(stats.bootstrap_fold(values, col.fold, seed=cfg.seed))
            if col.details is not None:
                details.setdefault(name, {})[col_name] = col.details(values)
        systems[name] = entry
    report: dict = {
        "title": title, "n_examples": n, "primary_metric": primary, "metrics": list(columns), "systems": systems,
        "lower_is_better": [c for c, col in columns.items() if not col.higher_is_better],
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                       "seed": cfg.seed, "batch_size": cfg.batch_size, "few_shot_k": cfg.few_shot_k,
                       "decoding": "greedy" if cfg.temperature == 0 else "sampling", "precision": precision,
                       "padding": "left"},
    }
    if baseline is not None:
        report["baseline_weights"] = baseline
    if details:
        report["details"] = details
    if primary is not None:
        col = columns[primary]
        have = [s for s in systems if primary in systems[s]]
        baselines = [s for s in have if s.startswith("base_")]
        comparisons = []
        if "tuned" in have and baselines:
            pick = max if col.higher_is_better else min
            best = pick(baselines, key=lambda s: systems[s][primary])
            comparisons.append(_comparison_entry(rows, systems, col, "tuned", best, n, cfg.seed,
                                                 label=f"the best baseline ({best})"))
            report["comparison"] = comparisons[0]
        if "tuned" in have and "compare" in have:
            comparisons.append(_comparison_entry(rows, systems, col, "tuned", "compare", n, cfg.seed))
        if comparisons:
            report["comparisons"] = comparisons
            report["verdict"] = "; ".join(c["sentence"] for c in comparisons)
        elif len(have) > 1:
            ranked = sorted(have, key=lambda s: systems[s][primary], reverse=col.higher_is_better)
            report["verdict"] = f"best on {primary}: {ranked[0]} ({systems[ranked[0]][primary]:.3f})"
    if training:
        report["training"] = training
        report["overfitting"] = overfitting_check(train_log or [], cfg.overfit_gap)
    return report
