"""The decision: fine-tune or not, from the quality table's paired comparison; and break-even volume.

Pure functions of numbers the report already holds, so they are tested on unit cases and on the
figures of a real run alike.

- The fine-tune's paired 95 % interval over the best prompting system lies above zero: fine-tune.
- It lies below zero: do not fine-tune, prompting is better.
- Otherwise, when the best prompting system's score sits inside the fine-tune's own interval (or above
  it): do not fine-tune; prompting does as well within what this test set can tell, and needs no
  training.
- Otherwise: too little data to tell; the interval of the difference is wider than the difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FINE_TUNE, DO_NOT, TOO_LITTLE = "fine-tune", "do not fine-tune", "too little data to tell"


@dataclass
class Recommendation:
    decision: str
    reason: str
    best_prompting: str
    difference: float            # fine-tune minus best prompting, on the primary metric
    difference_ci95: tuple[float, float]

    def as_dict(self) -> dict:
        """The report's form: what report.json holds, so the returned report equals the file (a list, not a tuple)."""
        out = asdict(self)
        out["difference_ci95"] = list(out["difference_ci95"])
        return out


def display_name(system: str) -> str:
    """base_retrieval_few_shot -> retrieval-few-shot; tuned -> fine-tune."""
    if system == "tuned":
        return "fine-tune"
    return system.removeprefix("base_").replace("_", "-")


def recommend(systems: dict[str, dict], metric: str, higher_is_better: bool, comparison: dict) -> Recommendation:
    """`systems`: report.json's per-system entries; `comparison`: its tuned-vs-best-baseline entry."""
    best = comparison["baseline"]
    diff = comparison["difference"]
    lo, hi = comparison["difference_ci95"]
    # Gains point the way that is better, so one set of rules serves both kinds of metric.
    sign = 1 if higher_is_better else -1
    gain_lo, gain_hi = min(sign * lo, sign * hi), max(sign * lo, sign * hi)
    name = display_name(best)
    tuned, prompting = systems["tuned"], systems[best]
    t_lo, t_hi = tuned[metric + "_ci95"]
    span = f"95 % CI {lo:+.3f} to {hi:+.3f}"
    rec = lambda decision, reason: Recommendation(decision, reason, best, diff, (lo, hi))  # noqa: E731
    if gain_lo > 0:
        return rec(FINE_TUNE, f"fine-tune: {diff:+.3f} {metric} over the best prompting system ({name}; {span})")
    if gain_hi < 0:
        # Stated from the prompting system's side, so the interval reads the same way as the number.
        return rec(DO_NOT, f"do not fine-tune: {name} beats the fine-tune by {-sign * diff:+.3f} {metric} "
                           f"(95 % CI {-gain_hi:+.3f} to {-gain_lo:+.3f})")
    inside = t_lo <= prompting[metric] <= t_hi
    not_worse = prompting[metric] >= tuned[metric] if higher_is_better else prompting[metric] <= tuned[metric]
    if inside or not_worse:
        return rec(DO_NOT, f"do not fine-tune: {name} ({prompting[metric]:.3f}) is within the interval of the "
                           f"fine-tune ({tuned[metric]:.3f}, 95 % CI {t_lo:.3f} to {t_hi:.3f}) and needs no training")
    return rec(TOO_LITTLE, f"too little data to tell: the interval of the difference ({span}) is wider than the "
                           f"difference ({diff:+.3f}); score more test examples")


def break_even(one_time: float, per_request_prompting: float, per_request_tuned: float) -> float | None:
    """Requests after which the fine-tune's one-time cost is repaid by cheaper requests; None: never."""
    saving = per_request_prompting - per_request_tuned
    if saving <= 0:
        return None
    return one_time / saving
