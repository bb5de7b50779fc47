"""The learning-curve sentence of the decide report: a rise only counts when it leaves the interval."""

from __future__ import annotations

from tunesmith.decide.report import learning_curve_sentence


def report(*points, higher=True) -> dict:
    return {"higher_is_better": higher,
            "learning_curve": [{"quality": q, "quality_ci95": [lo, hi]} for q, lo, hi in points]}


def test_a_rise_beyond_the_interval_says_more_data_would_help():
    text = learning_curve_sentence(report((0.40, 0.28, 0.53), (0.60, 0.47, 0.71), (0.85, 0.74, 0.92)))
    assert "+0.200, +0.250" in text and "more data would likely help." in text


def test_a_last_step_inside_the_interval_is_a_flattening_curve():
    # The quickstart's own curve (decide, idle AVX-512 bf16): 0.700 -> 0.950 -> 0.967 [0.886, 0.991].
    text = learning_curve_sentence(report((0.700, 0.575, 0.801), (0.950, 0.863, 0.983), (0.967, 0.886, 0.991)))
    assert "flattening" in text and "[0.886, 0.991]" in text and "would likely help little" in text


def test_a_fall_says_more_of_the_same_data_is_unlikely_to_help():
    text = learning_curve_sentence(report((0.5, 0.4, 0.6), (0.7, 0.6, 0.8), (0.65, 0.55, 0.75)))
    assert "does not rise" in text and "+0.200, -0.050" in text


def test_lower_is_better_metrics_count_a_fall_as_a_rise():
    text = learning_curve_sentence(report((3.0, 2.8, 3.2), (2.0, 1.9, 2.1), (1.2, 1.1, 1.3), higher=False))
    assert "+1.000, +0.800" in text and "more data would likely help." in text


def test_the_forgetting_pitfall_says_what_helped_when_flagged_and_shows_notes():
    from tunesmith.config import EvalConfig
    from tunesmith.decide.report import pitfall_lines
    from tunesmith.eval import regression
    from tunesmith.eval.sections.forgetting import HELP

    cfg = EvalConfig()
    base = {"qa_scores": [1.0] * 30 + [0.0] * 30, "ppl_rows": [(20.0, 10)]}
    rest = {"leakage": {"flagged": False, "threshold": 0.8, "near_duplicates": 0, "test_examples": 60, "examples": []},
            "data_size": {"flagged": False}, "test_size": {"flagged": False}}
    for tuned, flagged in (({"qa_scores": [1.0] * 18 + [0.0] * 42, "ppl_rows": [(20.0, 10)]}, True),      # 12 of 60 lost
                           # 6 lost, 2 gained: -0.067, past the threshold, but inside the noise
                           ({"qa_scores": [1.0] * 24 + [0.0] * 6 + [1.0] * 2 + [0.0] * 28, "ppl_rows": [(20.0, 10)]}, False)):
        lines = pitfall_lines({"forgetting": regression.compare(base, tuned, cfg), **rest})
        (line,) = [x for x in lines if x.startswith("- General-skill regression")]
        assert ("**flagged**" in line) is flagged and (HELP in line) is flagged
        assert any(x.startswith("  Note: general QA accuracy fell 0.500 -> 0.433") for x in lines) is not flagged
