"""`tunesmith decide` on the shipped lookup task with the real embedded model: the answer sits in a similar
training example, so retrieval few-shot is enough and the recommendation is not to fine-tune."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from tunesmith.decide import DecideOptions, decide


@pytest.mark.slow
@pytest.mark.acceptance
@pytest.mark.timeout(3600)
def test_decide_does_not_recommend_fine_tuning_the_lookup_task(tmp_path):
    task = Path(str(resources.files("tunesmith") / "assets" / "lookup"))
    opts = DecideOptions(test=str(task / "test.jsonl"), metrics=["exact_match"], budget_minutes=1,
                         regression=False, latency_requests=8, learning_curve=False)
    report = decide(task / "train.jsonl", tmp_path / "decide", opts)
    rec, systems = report["recommendation"], report["systems"]
    assert rec["decision"] == "do not fine-tune", rec
    assert rec["best_prompting"] == "base_retrieval_few_shot"
    retrieval = systems["base_retrieval_few_shot"]
    assert retrieval["quality"] >= 0.8, systems
    # Random demonstrations do not hold the answer; the retrieved ones do.
    assert retrieval["quality_ci95"][0] > systems["base_few_shot"]["quality_ci95"][1]
    assert systems["tuned"]["quality"] <= retrieval["quality_ci95"][1]
