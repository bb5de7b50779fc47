"""`tunesmith decide` end to end on the tiny model: the report's structure, its numbers against their
sources (the evaluation's table, the measured requests), the recommendation recomputed from the
measured figures, the pitfalls, and bad input stopped before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.decide import DecideOptions, break_even, decide, recommend
from tunesmith.decide.report import markdown
from tunesmith.errors import UserError

CITIES = ["Athens", "Paris", "Oslo", "Lima", "Cairo", "Quito", "Rome", "Tokyo"]


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"ex-{i}", "messages": [
        {"role": "user", "content": f"Which city is order {i} going to? Order {i}: ship {i % 5 + 1} lamps to {CITIES[i % 8]}."},
        {"role": "assistant", "content": CITIES[i % 8]}]} for i in range(start, start + n)]


def write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("decide")
    train = rows(40)
    test = rows(6, start=100) + [train[3]]          # one leaked example: an exact copy of a training one
    docs = root / "docs"
    docs.mkdir()
    (docs / "cities.md").write_text("# Cities\n\n" + "\n\n".join(f"{c} is a city we ship lamps to." for c in CITIES))
    return {"train": write(root / "train.jsonl", train), "test": write(root / "test.jsonl", test), "docs": docs,
            "root": root}


OPTS = dict(budget_minutes=0.05, max_epochs=0.5, latency_requests=3, max_new_tokens=4, regression=False, batch_size=4)


@pytest.fixture(scope="module")
def run(files, tiny_model_dir):
    out = files["root"] / "out"
    opts = DecideOptions(model=str(tiny_model_dir), test=str(files["test"]), docs=str(files["docs"]), **OPTS,
                         price_per_1k_tokens=[0.5, 1.5], price_per_cpu_hour=3.6, price_per_1k_training_tokens=0.25)
    report = decide(files["train"], out, opts)
    return out, report


def test_report_files_and_systems(run):
    out, report = run
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text() == markdown(report)
    assert list(report["systems"]) == ["base_zero_shot", "base_few_shot", "base_retrieval_few_shot", "base_rag", "tuned"]
    assert report["n_train"] == 40 and report["n_test"] == 7


def test_figures_match_their_sources(run):
    out, report = run
    quality = json.loads((out / "finetune" / "report.json").read_text())
    for name, s in report["systems"].items():
        assert s["quality"] == quality["systems"][name]["exact_match"]
        assert s["quality_ci95"] == quality["systems"][name]["exact_match_ci95"]
        assert s["requests"] == 3 and 0 < s["latency_p50_s"] <= s["latency_p95_s"]
        assert s["cpu_s_per_1k_requests"] > 0 and 0 <= s["completion_tokens_per_request"] <= 4
        # The timed requests are the evaluation's first three prompts: same token counts.
        counted = quality["prompt_tokens"][name]["per_example"][:3]
        assert s["prompt_tokens_per_request"] == pytest.approx(sum(counted) / 3)
        assert s["prompt_tokens_added"] == quality["prompt_tokens"][name]["added_mean"]
    added = {n: s["prompt_tokens_added"] for n, s in report["systems"].items()}
    assert added["base_zero_shot"] == 0 == added["tuned"]
    assert min(added["base_few_shot"], added["base_retrieval_few_shot"], added["base_rag"]) > 20
    for s in report["systems"].values():
        # 1,000 requests: tokens at 0.5 / 1.5 per 1,000 plus CPU time at 3.6 per hour (0.001 per second).
        expected = (s["prompt_tokens_per_request"] * 0.5 + s["completion_tokens_per_request"] * 1.5
                    + s["cpu_s_per_1k_requests"] * 0.001)
        assert s["money_per_1k_requests"] == pytest.approx(expected)
    t = report["training"]
    assert t["money"] == pytest.approx(t["cpu_s"] * 0.001 + t["tokens"] / 1000 * 0.25)
    assert report["systems"]["tuned"]["one_time_money"] == t["money"]
    assert t["steps"] == t["plan"]["steps"]["1.0"] and t["cpu_s"] > 0 and t["tokens"] > 0
    assert report["systems"]["tuned"]["one_time_cpu_s"] == t["cpu_s"]


def test_recommendation_and_break_even_follow_from_the_measured_numbers(run):
    _, report = run
    metric = report["metric"]
    systems = {n: {metric: s["quality"], metric + "_ci95": s["quality_ci95"]} for n, s in report["systems"].items()}
    again = recommend(systems, metric, True, report["comparison"])
    assert again.as_dict() == {**report["recommendation"], "difference_ci95": list(again.difference_ci95)}
    lo, hi = report["comparison"]["difference_ci95"]
    if report["recommendation"]["decision"] == "fine-tune":
        assert lo > 0
    else:
        assert lo <= 0
    best = report["break_even"]["against"]
    per_request = {n: report["systems"][n]["cpu_s_per_1k_requests"] / 1000 for n in (best, "tuned")}
    expected = break_even(report["training"]["cpu_s"], per_request[best], per_request["tuned"])
    assert report["break_even"]["requests_cpu"] == (pytest.approx(expected) if expected is not None else None)
    money = {n: report["systems"][n]["money_per_1k_requests"] / 1000 for n in (best, "tuned")}
    expected = break_even(report["training"]["money"], money[best], money["tuned"])
    assert report["break_even"]["requests_money"] == (pytest.approx(expected) if expected is not None else None)


def test_learning_curve_and_pitfalls(run):
    _, report = run
    curve = report["learning_curve"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 1.0]
    assert [p["examples"] for p in curve] == [10, 20, 40]
    steps = report["training"]["plan"]["steps"]
    assert [p["steps"] for p in curve] == [steps["0.25"], steps["0.5"], steps["1.0"]]
    leak = report["pitfalls"]["leakage"]
    assert leak["near_duplicates"] == 1 and leak["examples"] == ["ex-3"] and leak["flagged"]
    assert "gap" in report["pitfalls"]["overfitting"]
    assert report["pitfalls"]["data_size"]["flagged"] and report["pitfalls"]["test_size"]["flagged"]


def test_budget_too_small_for_one_step_stops_before_the_fine_tune(files, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="one training step takes .* longer than the whole budget"):
        decide(files["train"], out, DecideOptions(model=str(tiny_model_dir), test=str(files["test"]),
                                                  **{**OPTS, "budget_minutes": 1e-5}))
    assert not (out / "finetune").exists() and not (out / "report.json").exists()


def test_cli_empty_docs_folder_fails_in_one_line_before_anything_runs(files, tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["decide", "--data", str(files["train"]), "--docs", str(empty), "--model", str(tiny_model_dir),
              "-o", str(out), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "has no .txt, .md or .pdf files" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_unknown_metric_is_named_by_its_flag(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["decide", "--data", str(files["train"]), "--metrics", "exact_match,blue", "--model", str(tiny_model_dir),
              "-o", str(out), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--metrics: unknown metric(s) blue" in err and "Traceback" not in err
    assert not out.exists()
