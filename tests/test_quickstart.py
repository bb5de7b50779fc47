"""The quickstart on the real embedded model: the fine-tune must clearly beat both baselines."""

import json
from pathlib import Path

import pytest

from tunesmith.events import Events
from tunesmith.quickstart import quickstart_config, run_quickstart


def test_quickstart_config_is_valid_and_points_at_shipped_data(tmp_path):
    cfg = quickstart_config(tmp_path / "qs")
    from pathlib import Path

    assert Path(cfg.data.train).is_file() and Path(cfg.eval.data).is_file()
    assert cfg.model.base == "default" and cfg.method.name == "lora"
    assert cfg.eval.metrics[0] == "json_exact"


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The whole demo, once for this module: its adapter is also the teacher of the synthesis test."""
    return run_quickstart(tmp_path_factory.mktemp("quickstart") / "qs", events=Events())


@pytest.mark.slow
@pytest.mark.acceptance
# The whole demo: ~3.5 min on a CPU with native bf16 (AVX-512 bf16 / AMX), ~25 min in fp32 on an
# AVX2-only 2-core CPU, where the suite-wide 600 s limit would cut it off half-way.
@pytest.mark.timeout(2700)
def test_quickstart_end_to_end(quickstart_run):
    run_dir = quickstart_run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "report.md", "report.json", "predictions.jsonl",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "merged/config.json", "merged/model.safetensors", "merged/tokenizer.json"):
        assert (run_dir / name).exists(), name
    report = json.loads((run_dir / "report.json").read_text())
    systems = report["systems"]
    assert set(systems) == {"base_zero_shot", "base_few_shot", "tuned"}
    tuned = systems["tuned"]["json_exact"]
    best_base = max(systems["base_zero_shot"]["json_exact"], systems["base_few_shot"]["json_exact"])
    # The targets of the foundation issue: >= 0.8 held-out accuracy and >= 0.4 above the better baseline.
    assert tuned >= 0.8, systems
    assert tuned - best_base >= 0.4, systems
    assert report["verdict"].startswith("tuned beats")
    # eval.stop_loops changes only the replies it stops: none of the tuned model's, so its greedy
    # answers are exactly what plain decoding gives.
    assert report["loops_stopped"]["tuned"] == 0 and report["generation"]["loop_limit"] >= 4
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]


@pytest.mark.slow
@pytest.mark.acceptance
# ~25 min on a 2-core AVX-512 bf16 CPU (synthesis ~16, the student's run ~8), plus the quickstart's run
# when this test is run alone.
@pytest.mark.timeout(5400)
def test_a_student_taught_from_ten_seeds_by_a_served_teacher_beats_base_few_shot(quickstart_run, tmp_path):
    """The data issue's end-to-end target: from 10 real seed examples, synthesize and curate 300 examples, train
    the default model on them alone, and beat base few-shot on the real held-out set by >= 0.4 json_exact.

    Self-Instruct's two steps: the embedded model writes new requests by continuing a numbered list of seed
    requests (`--write-as completion`); the quickstart's adapter, served by `tunesmith serve`, answers them;
    examples/synth/order_check.py keeps answers whose every value is in the request. No request is asked twice
    (the server's traffic log)."""
    from tunesmith.serve.options import ServeOptions
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import build_state
    from tunesmith.synth.options import SynthOptions
    from tunesmith.synth.run import synthesize

    root = Path(__file__).resolve().parents[1]
    task = root / "src" / "tunesmith" / "assets" / "quickstart"
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join((task / "train.jsonl").read_text().splitlines()[:10]) + "\n")
    traffic = tmp_path / "traffic.jsonl"
    state = build_state(ServeOptions(adapters={"orders": str(quickstart_run.run_dir / "adapter")},
                                     traffic_log=str(traffic)))
    out = tmp_path / "synth.jsonl"
    with BackgroundServer(state) as url:
        result = synthesize("from-seeds", seeds, out, SynthOptions(
            teacher="local:default", write_as="completion", temperature=0.8, max_tokens=48,
            answerer="openai:orders", teacher_url=f"{url}/v1", n=300, max_requests=3000,
            test=str(task / "test.jsonl"), check=str(root / "examples" / "synth" / "order_check.py"), min_score=0,
            concurrency=16))
    state.close()
    assert len(result.kept) == 300, result.report["stages"]
    asked = [json.dumps(json.loads(line)["messages"][:-1]) for line in traffic.read_text().splitlines()]
    assert len(asked) == len(set(asked)) == result.report["teacher_usage"]["requests"] - result.report["requests"]

    student = run_quickstart(tmp_path / "student", [f"data.train={out}", "train.epochs=3",
                                                    "train.early_stopping_patience=0", "eval.baselines=[few-shot]",
                                                    "output.merge=false"], events=Events())
    systems = json.loads((student.run_dir / "report.json").read_text())["systems"]
    teacher_systems = json.loads((quickstart_run.run_dir / "report.json").read_text())["systems"]
    # Base few-shot with demonstrations from the synthesized data (the student's run) and from the real
    # training data (the quickstart's run): the student beats the better of the two.
    few_shot = max(systems["base_few_shot"]["json_exact"], teacher_systems["base_few_shot"]["json_exact"])
    assert systems["tuned"]["json_exact"] - few_shot >= 0.4, (systems, teacher_systems["base_few_shot"])
