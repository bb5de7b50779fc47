"""`tunesmith sweep` on the tiny model: trials are real runs, the table orders them by what they
measured, best.yaml trains back to the best trial's validation loss, the budget stops trials, and a
bad grid fails before any training."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from tunesmith.config import load_config, validate
from tunesmith.errors import ConfigError
from tunesmith.events import Events
from tunesmith.pipeline import run
from tunesmith.train.sweep import Sweep, SweepOptions, run_sweep


def _config(tmp_path, model_dir, train_file, **eval_keys) -> dict:
    return {"model": {"base": str(model_dir)}, "data": {"train": str(train_file), "max_len": 64},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-4, "warmup_ratio": 0.0, "precision": "fp32"},
            "eval": {"enabled": False, **eval_keys}, "output": {"dir": str(tmp_path / "own-run")}}


def test_trials_ranked_by_val_loss_and_best_yaml_reproduces_it(tmp_path, tiny_model_dir, memo_data):
    cfg = validate(_config(tmp_path, tiny_model_dir, memo_data))
    options = SweepOptions(grid=["train.lr=1e-3,3e-2", "method.r=8", "train.epochs=3"], out=str(tmp_path / "sweep"))
    result = run_sweep(cfg, options)

    # Coordinate search: the config, 2 lrs, then r=8 at the best lr, then 3 epochs at the best so far.
    assert len(result.trials) == 5
    assert result.trials[0].overrides == {}
    assert [t.overrides.get("train.lr") for t in result.trials[:3]] == [None, 1e-3, 3e-2]
    best_lr = result.trials[min(range(3), key=lambda i: result.trials[i].val_loss)].overrides.get("train.lr")
    assert all(t.overrides.get("train.lr") == best_lr for t in result.trials[3:])
    # alpha follows r (alpha/r = 2 in the config), and the table shows it.
    for t in result.trials:
        assert t.settings["method.alpha"] == 2 * t.settings["method.r"]
    # Each trial really trained: 12 of 16 examples (val_split 0.1 added: 2 held out) at batch 4 is 4 steps an epoch.
    assert [t.steps for t in result.trials] == [4, 4, 4, 4, 12]
    losses = [t.val_loss for t in result.trials]
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == len(losses)
    # A 30x higher lr on a memorisable set must lower the validation loss after 4 steps.
    assert result.trials[2].val_loss < result.trials[1].val_loss < result.trials[0].val_loss

    ranked = [t.val_loss for t in result.ranked]
    assert ranked == sorted(losses)
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert report["ranking"] == [t.index for t in result.ranked] and report["ranked_by"] == "val_loss"
    header, *table = [[c.strip() for c in line.strip("| ").split("|")]
                      for line in (tmp_path / "sweep" / "sweep.md").read_text().splitlines() if line.startswith("| ")]
    column = header.index("val_loss")
    assert [float(row[column]) for row in table] == pytest.approx(ranked, abs=1e-4)
    assert [int(row[header.index("trial")]) for row in table] == report["ranking"]

    # best.yaml is a config `tunesmith train` takes; trained, it lands on the best trial's val loss.
    best = load_config(tmp_path / "sweep" / "best.yaml", [f"output.dir={tmp_path / 'again'}"])
    assert best.train.lr == best_lr and best.data.val_split == 0.1
    again = run(best, events=Events())
    assert again.train.best_val_loss == pytest.approx(result.best.val_loss, rel=1e-5)


def test_the_metric_ranks_first_on_the_validation_split(tmp_path, tiny_model_dir, memo_data):
    raw = _config(tmp_path, tiny_model_dir, memo_data, enabled=True, metrics=["exact_match", "json_valid"],
                  data="/nonexistent-test-set.jsonl", max_new_tokens=8)
    raw["data"]["val_split"] = 0.25
    options = SweepOptions(grid=["train.lr=3e-2"], out=str(tmp_path / "sweep"), val_examples=3)
    sweep = Sweep(validate(raw), options)
    result = sweep.run()
    assert result.metric == "exact_match" and len(result.trials) == 2
    for t in result.trials:
        # Scored on 3 of the 4 held-out examples, never on eval.data (which does not exist).
        report = json.loads((tmp_path / "sweep" / "trials" / f"{t.index:02d}" / "report.json").read_text())
        assert report["n_examples"] == 3 and set(report["systems"]) == {"tuned"}
        assert t.metric == report["systems"]["tuned"]["exact_match"]
    # Ranked by the metric, then by validation loss.
    assert [t.index for t in result.ranked] == [t.index for t in sorted(result.trials, key=lambda t: (-t.metric, t.val_loss))]
    best = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    assert best["eval"]["data"] == "/nonexistent-test-set.jsonl" and best["eval"]["baselines"] == ["zero-shot", "few-shot"]


def test_the_budget_stops_trials_after_the_configs_own(tmp_path, tiny_model_dir, memo_data):
    cfg = validate(_config(tmp_path, tiny_model_dir, memo_data))
    result = run_sweep(cfg, SweepOptions(grid=["train.lr=1e-3,1e-2"], budget_minutes=1e-4, out=str(tmp_path / "s")))
    assert len(result.trials) == 1 and result.best.index == 0
    assert result.stopped.startswith("budget of") and [n["overrides"] for n in result.not_run] == [
        {"train.lr": 1e-3}, {"train.lr": 1e-2}]
    assert "Stopped early: budget" in (tmp_path / "s" / "sweep.md").read_text()


def test_max_trials_and_axes_the_method_lacks(tmp_path, tiny_model_dir, memo_data):
    raw = _config(tmp_path, tiny_model_dir, memo_data)
    raw["method"] = {"name": "ia3"}
    sweep = Sweep(validate(raw), SweepOptions(grid=["method.r=4,8", "train.lr=1e-3,1e-2"], max_trials=2,
                                              out=str(tmp_path / "s")))
    assert sweep.skipped_axes == ["method.r"] and sweep.columns == ["train.lr"]
    result = sweep.run()
    assert len(result.trials) == 2 and result.stopped == "max_trials=2 reached"


@pytest.mark.parametrize("grid,message", [
    ("train.lr", "--grid 'train.lr': expected KEY=V1,V2"),
    ("train.lrr=1e-3", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    ("train.lr=-1", "train.lr: expected 'auto' or a number above 0"),
])
def test_a_bad_grid_fails_before_training(tmp_path, tiny_model_dir, memo_data, grid, message):
    cfg = validate(_config(tmp_path, tiny_model_dir, memo_data))
    with pytest.raises(ConfigError) as exc:
        Sweep(cfg, SweepOptions(grid=[grid], out=str(tmp_path / "s")))
    assert message in str(exc.value)
    assert not (tmp_path / "s").exists()


def test_cli_writes_the_table_and_a_bad_grid_is_one_line(tmp_path, tiny_model_dir, memo_data):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, tiny_model_dir, memo_data)))
    r = subprocess.run([sys.executable, "-m", "tunesmith", "sweep", str(path), "--grid", "train.lr=1e-2",
                        "--max-trials", "1", "--quiet", "--out", str(tmp_path / "sweep")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sweep trial 0: the config as given -> val_loss" in r.stdout and "best: trial 0" in r.stdout
    assert "stopped early: max_trials=1 reached" in r.stdout
    assert {p.name for p in (tmp_path / "sweep").iterdir()} >= {"sweep.md", "sweep.json", "best.yaml", "trials"}
    r = subprocess.run([sys.executable, "-m", "tunesmith", "sweep", str(path), "--grid", "train.lrr=1"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "unknown key 'train.lrr'" in r.stderr and "Traceback" not in r.stderr
