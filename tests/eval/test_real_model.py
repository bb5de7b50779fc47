"""The embedded SmolLM2-135M-Instruct through pass@k: real generated programs run in the sandbox."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import EvalConfig
from tunesmith.eval.passk import pass_at_k
from tunesmith.eval.runner import build_systems, run_eval

TASKS = [
    {"id": "add", "prompt": "Write a Python function add(a, b) that returns the sum of a and b. Reply with code only.",
     "test": "assert add(2, 3) == 5\nassert add(-4, 4) == 0"},
    {"id": "is_even", "prompt": "Write a Python function is_even(n) that returns True if n is even, else False. "
     "Reply with code only.", "test": "assert is_even(4) is True\nassert is_even(7) is False"},
]


@pytest.mark.slow
def test_default_model_pass_at_k_in_the_sandbox(default_model_dir, tokenizer, tmp_path):
    from tunesmith.models import load_model

    model = load_model(str(default_model_dir)).eval()
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    cfg = EvalConfig(metrics=[], baselines=[], code_tasks=str(tasks), code_samples=4, pass_k=[1, 4],
                     temperature=0.7, max_new_tokens=48, regression=False, seed=1)
    run_eval(build_systems(model, []), tokenizer, [], cfg, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    counts = {t["id"]: sum(r["passed"] for r in rows if r["id"].startswith(t["id"] + "#")) for t in TASKS}
    # The model writes these one-liners correctly most of the time; the sandbox must let a correct
    # program pass (a sandbox that fails everything would also "contain" hostile code).
    assert counts["add"] >= 1, rows
    for k in (1, 4):
        expected = sum(pass_at_k(4, c, k) for c in counts.values()) / len(TASKS)
        assert report["systems"]["tuned"][f"pass@{k}"] == pytest.approx(expected)
    assert report["systems"]["tuned"]["pass@4"] >= report["systems"]["tuned"]["pass@1"] > 0
