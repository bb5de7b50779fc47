"""The decision rules, break-even and the step plan on hand-made numbers (tests/decide/test_decide.py
checks them again on the numbers of a real run)."""

from __future__ import annotations

import pytest

from tunesmith.decide.plan import plan_steps
from tunesmith.decide.recommend import DO_NOT, FINE_TUNE, TOO_LITTLE, break_even, recommend
from tunesmith.errors import UserError


def table(tuned: float, tuned_ci: tuple, best: float, metric: str = "exact_match") -> dict:
    return {"tuned": {metric: tuned, metric + "_ci95": list(tuned_ci)},
            "base_retrieval_few_shot": {metric: best, metric + "_ci95": [best - 0.1, best + 0.1]}}


def comparison(diff: float, lo: float, hi: float) -> dict:
    return {"system": "tuned", "baseline": "base_retrieval_few_shot", "difference": diff, "difference_ci95": [lo, hi]}


def test_fine_tune_when_the_paired_interval_is_above_zero():
    rec = recommend(table(0.9, (0.8, 0.95), 0.48), "exact_match", True, comparison(0.42, 0.30, 0.55))
    assert rec.decision == FINE_TUNE
    assert rec.reason.startswith("fine-tune: +0.420 exact_match over the best prompting system (retrieval-few-shot")


def test_do_not_when_prompting_is_significantly_better():
    rec = recommend(table(0.5, (0.4, 0.6), 0.8), "exact_match", True, comparison(-0.3, -0.45, -0.15))
    assert rec.decision == DO_NOT
    assert "retrieval-few-shot beats the fine-tune by +0.300 exact_match (95 % CI +0.150 to +0.450)" in rec.reason


def test_do_not_when_prompting_is_within_the_fine_tunes_interval():
    rec = recommend(table(0.85, (0.75, 0.92), 0.8), "exact_match", True, comparison(0.05, -0.03, 0.13))
    assert rec.decision == DO_NOT
    assert "retrieval-few-shot (0.800) is within the interval of the fine-tune (0.850, 95 % CI 0.750 to 0.920)" in rec.reason


def test_too_little_data_when_the_interval_is_wider_than_the_difference():
    rec = recommend(table(0.6, (0.45, 0.75), 0.40), "exact_match", True, comparison(0.20, -0.05, 0.45))
    assert rec.decision == TOO_LITTLE
    assert "interval of the difference (95 % CI -0.050 to +0.450) is wider than the difference (+0.200)" in rec.reason


def test_lower_is_better_metrics_read_the_other_way():
    systems = {"tuned": {"perplexity": 3.0, "perplexity_ci95": [2.8, 3.2]},
               "base_zero_shot": {"perplexity": 5.0, "perplexity_ci95": [4.7, 5.3]}}
    cmp = {"baseline": "base_zero_shot", "difference": -2.0, "difference_ci95": [-2.3, -1.7]}
    assert recommend(systems, "perplexity", False, cmp).decision == FINE_TUNE
    worse = {"baseline": "base_zero_shot", "difference": 2.0, "difference_ci95": [1.7, 2.3]}
    rec = recommend(systems, "perplexity", False, worse)
    assert rec.decision == DO_NOT and "zero-shot beats the fine-tune by +2.000 perplexity (95 % CI +1.700 to +2.300)" in rec.reason


def test_break_even_is_the_one_time_cost_over_the_saving_per_request():
    assert break_even(120.0, 0.5, 0.2) == pytest.approx(400.0)
    assert break_even(120.0, 0.2, 0.2) is None and break_even(120.0, 0.1, 0.2) is None


def test_plan_steps_fits_the_budget_and_caps_at_max_epochs():
    # 60 s, 0.5 s a step, curve costs 1.75 full runs: floor(60 / 0.875) = 68 full steps, under the cap of 2 x 13.
    plan = plan_steps(60, 0.5, 100, 8, 10.0, True)
    assert plan.steps == {0.25: 17, 0.5: 34, 1.0: 68} and not plan.capped_by_epochs
    capped = plan_steps(600, 0.5, 100, 8, 2.0, True)
    assert capped.steps[1.0] == 26 and capped.capped_by_epochs
    dropped = plan_steps(1.0, 0.8, 100, 8, 2.0, True)
    assert dropped.curve_dropped and dropped.steps == {1.0: 1}


def test_a_budget_below_one_step_is_a_user_error():
    with pytest.raises(UserError, match=r"--budget-minutes 0.01: one training step takes 1.0 s here"):
        plan_steps(0.6, 1.0, 100, 8, 2.0, True)
