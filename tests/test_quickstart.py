"""The quickstart on the real embedded model: the fine-tune must clearly beat both baselines."""

import json

import pytest

from tunesmith.events import Events
from tunesmith.quickstart import quickstart_config, run_quickstart


def test_quickstart_config_is_valid_and_points_at_shipped_data(tmp_path):
    cfg = quickstart_config(tmp_path / "qs")
    from pathlib import Path

    assert Path(cfg.data.train).is_file() and Path(cfg.eval.data).is_file()
    assert cfg.model.base == "default" and cfg.method.name == "lora"
    assert cfg.eval.metrics[0] == "json_exact"


@pytest.mark.slow
@pytest.mark.acceptance
# The whole demo: ~3.5 min on a CPU with native bf16 (AVX-512 bf16 / AMX), ~25 min in fp32 on an
# AVX2-only 2-core CPU, where the suite-wide 600 s limit would cut it off half-way.
@pytest.mark.timeout(2700)
def test_quickstart_end_to_end(tmp_path):
    result = run_quickstart(tmp_path / "qs", events=Events())
    run_dir = result.run_dir
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
