"""Uncertainty for reported numbers: intervals for means and paired differences."""

from __future__ import annotations

import math
import random


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(xs: list[float], iters: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    if not xs:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(iters))
    return (means[int(alpha / 2 * iters)], means[int((1 - alpha / 2) * iters) - 1])


def interval(xs: list[float], seed: int = 0) -> tuple[float, float]:
    """Wilson for 0/1 scores (exact-match style), bootstrap for anything graded."""
    if all(x in (0.0, 1.0) for x in xs):
        return wilson_interval(sum(xs), len(xs))
    return bootstrap_interval(xs, seed=seed)


def paired_difference(a: list[float], b: list[float], seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean of a - b over the same examples, with a paired-bootstrap 95 % interval."""
    diffs = [x - y for x, y in zip(a, b)]
    return mean(diffs), bootstrap_interval(diffs, seed=seed)


def bootstrap_fold(rows: list, fold, iters: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap of a corpus statistic: resample examples (rows), refold each resample."""
    if not rows:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(rows)
    values = sorted(fold([rows[rng.randrange(n)] for _ in range(n)]) for _ in range(iters))
    return (values[int(alpha / 2 * iters)], values[int((1 - alpha / 2) * iters) - 1])


def paired_fold_difference(a: list, b: list, fold, iters: int = 1000, seed: int = 0,
                           alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
    """fold(a) - fold(b) with a paired bootstrap: both systems resampled on the same examples."""
    n = len(a)
    if n == 0:
        return float("nan"), (float("nan"), float("nan"))
    rng = random.Random(seed)
    diffs = []
    for _ in range(iters):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(fold([a[i] for i in idx]) - fold([b[i] for i in idx]))
    diffs.sort()
    return fold(a) - fold(b), (diffs[int(alpha / 2 * iters)], diffs[int((1 - alpha / 2) * iters) - 1])
