"""`tunesmith decide --teacher`: a stronger model, behind a real OpenAI-compatible HTTP endpoint, scored
zero-shot and few-shot next to the other systems. The scripted endpoint knows the right answer for the
even-numbered orders and says "unsure" otherwise, so its quality is known in advance; its token counts are
its own (`usage`), so the per-request figures can be checked against what it reported."""

from __future__ import annotations

import json
import re

import pytest

from tests.synth.teacher_server import RunningTeacher, ScriptedTeacher
from tunesmith.cli import main
from tunesmith.decide import DecideOptions, decide
from tunesmith.decide.report import markdown
from tunesmith.decide.teacher import teacher_verdict
from tunesmith.eval import stats

from .test_decide import CITIES, OPTS, rows, write


class OracleTeacher(ScriptedTeacher):
    """Answers the city of an even-numbered order in the last request, "unsure" for an odd one."""

    def reply(self, text: str) -> str:
        number = int(re.findall(r"Order (\d+):", text)[-1])
        return CITIES[number % 8] if number % 2 == 0 else "unsure"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("decide-teacher")
    train, test = write(root / "train.jsonl", rows(40)), write(root / "test.jsonl", rows(8, start=100))
    oracle = OracleTeacher(fail=False)
    with RunningTeacher(oracle) as url:
        opts = DecideOptions(model=str(tiny_model_dir), test=str(test), teacher="openai:scripted", teacher_url=url,
                             teacher_price_per_1k_tokens=[2.0, 8.0], **OPTS)
        report = decide(train, root / "out", opts)
    return root / "out", report, oracle


def test_the_teacher_is_scored_like_the_other_systems(teacher_run):
    out, report, oracle = teacher_run
    systems = report["systems"]
    assert list(systems)[-2:] == ["teacher_zero_shot", "teacher_few_shot"]
    correct = [1.0 if i % 2 == 0 else 0.0 for i in range(100, 108)]          # all even numbers: 100, 102, ...
    assert correct.count(1.0) == 4
    for name in ("teacher_zero_shot", "teacher_few_shot"):
        s = systems[name]
        assert s["quality"] == pytest.approx(0.5)
        assert s["quality_ci95"] == pytest.approx(list(stats.interval(correct, seed=0)))
        assert s["requests"] == OPTS["latency_requests"] and 0 < s["latency_p50_s"] <= s["latency_p95_s"]
        assert s["cpu_s_per_1k_requests"] is None and s["one_time_cpu_s"] == 0.0
        # Money from the endpoint's own token counts at the teacher's prices.
        money = (s["prompt_tokens_per_request"] * 2.0 + s["completion_tokens_per_request"] * 8.0) / 1000 * 1000
        assert s["money_per_1k_requests"] == pytest.approx(money)
    # Few-shot prompts carry 3 demonstrations more than zero-shot ones, counted by the endpoint.
    assert systems["teacher_few_shot"]["prompt_tokens_added"] > 3 * 10
    assert systems["teacher_zero_shot"]["prompt_tokens_added"] == 0.0
    # Every test request asked once per system, nothing more (no cache, no retries here).
    assert sum(oracle.served.values()) == 2 * 8 and max(oracle.served.values()) == 1
    usage = report["teacher"]["usage"]
    assert sum(u["requests"] for u in usage.values()) == 16 and all(u["failed"] == 0 for u in usage.values())


def test_the_report_says_how_the_teacher_compares(teacher_run):
    out, report, _ = teacher_run
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "report.md").read_text() == markdown(report)
    t = report["teacher"]
    assert t["model"] == "openai:scripted"
    assert t == {**t, **teacher_verdict(report["systems"], report["metric"], report["higher_is_better"])}
    assert f"Teacher: {t['sentence']}." in markdown(report)
    assert "teacher zero-shot (openai:scripted)" in markdown(report)


def test_teacher_verdict_by_intervals():
    systems = {"tuned": {"label": "fine-tune", "quality": 0.9, "quality_ci95": [0.8, 0.95]},
               "teacher_zero_shot": {"label": "t0", "quality": 0.3, "quality_ci95": [0.2, 0.4]},
               "teacher_few_shot": {"label": "t3", "quality": 0.5, "quality_ci95": [0.4, 0.6]}}
    v = teacher_verdict(systems, "exact_match", True)
    assert v["best"] == "teacher_few_shot" and v["verdict"] == "fine-tune better"
    systems["teacher_few_shot"].update(quality=0.99, quality_ci95=[0.96, 1.0])
    v = teacher_verdict(systems, "exact_match", True)
    assert v["verdict"] == "teacher better" and "tunesmith synth relabel" in v["sentence"]
    systems["teacher_few_shot"].update(quality=0.85, quality_ci95=[0.7, 0.95])
    assert teacher_verdict(systems, "exact_match", True)["verdict"] == "not distinguishable"
    # Lower is better (a perplexity-like metric): the lower teacher wins.
    assert teacher_verdict(systems, "ppl", False)["best"] == "teacher_zero_shot"


def test_cli_unreachable_teacher_fails_in_one_line_before_anything_runs(tiny_model_dir, tmp_path, capsys):
    from tunesmith.serve.server import free_port

    train = write(tmp_path / "train.jsonl", rows(40))
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SystemExit) as exc:
        main(["decide", "--data", str(train), "--model", str(tiny_model_dir), "--teacher", "openai:big",
              "--teacher-url", url, "-o", str(out), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert url in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (out / "report.json").exists() and not (out / "finetune").exists()
