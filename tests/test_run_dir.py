"""RunDir: the run folder's layout stated once; clearing a previous run; what a run may write."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.test_engine import make_config
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.events import Events
from tunesmith.pipeline import run
from tunesmith.run_dir import RunDir
from tunesmith.train.checkpoint import list_checkpoints


def _path_properties(run_dir: RunDir) -> dict[str, Path]:
    return {name: getattr(run_dir, name) for name, attr in vars(RunDir).items() if isinstance(attr, property)}


def test_every_output_has_a_property_and_every_property_is_an_output(tmp_path):
    run_dir = RunDir(tmp_path)
    paths = _path_properties(run_dir)
    assert sorted(p.name for p in paths.values()) == sorted(RunDir.OUTPUTS)
    assert all(p.parent == tmp_path for p in paths.values())
    assert run_dir.final("adapter") == tmp_path / "adapter" and run_dir.final("full") == tmp_path / "model"
    assert Path(run_dir) == tmp_path and RunDir(run_dir) == run_dir  # os.PathLike: accepted where a path is


def test_checkpoint_names_are_the_ones_list_checkpoints_reads(tmp_path):
    run_dir = RunDir(tmp_path)
    for step in (10, 2, 100):
        run_dir.checkpoint(step).mkdir(parents=True)
    (run_dir.checkpoints / "step-000003.tmp").mkdir()  # a half-written one is not a checkpoint
    assert run_dir.checkpoint(2).name == "step-000002"
    assert list_checkpoints(run_dir.checkpoints) == [run_dir.checkpoint(s) for s in (2, 10, 100)]


def test_clear_outputs_removes_outputs_only_and_keeps_inputs(tmp_path):
    run_dir = RunDir(tmp_path)
    for path in run_dir.outputs():
        if path.suffix:
            path.write_text("old")
        else:
            (path / "inner").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "predictions.jsonl").write_text("my data, named like an output")
    run_dir.clear_outputs(keep=[str(tmp_path / "predictions.jsonl"), None])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "predictions.jsonl"]


def test_prepare_refuses_a_file_and_a_used_folder_without_overwrite(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        RunDir(blocker).prepare(resume=False, overwrite=True)
    used = RunDir(tmp_path / "used")
    used.root.mkdir()
    used.metrics.write_text("{}\n")
    with pytest.raises(UserError, match="already holds a run"):
        used.prepare(resume=False, overwrite=False)
    used.prepare(resume=True, overwrite=False)  # resuming keeps the outputs
    assert used.metrics.exists()
    used.prepare(resume=False, overwrite=True)
    assert not used.metrics.exists() and used.root.is_dir()


def test_a_run_writes_only_what_run_dir_names(tmp_path, tiny_model_dir, memo_data):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "r", data={"val_split": 0.25},
                                  train={"max_steps": 2, "batch_size": 4, "save_every": 1}, output={"merge": True}))
    result = run(cfg, events=Events())
    run_dir = RunDir(result.run_dir)
    written = {p.name for p in run_dir.root.iterdir()}
    assert written <= set(RunDir.OUTPUTS), written - set(RunDir.OUTPUTS)
    for path in (run_dir.config, run_dir.data_stats, run_dir.metrics, run_dir.loss_plot, run_dir.adapter,
                 run_dir.train_summary, run_dir.merged, run_dir.checkpoint(2)):
        assert path.exists(), path
    assert result.train.output_dir == run_dir.adapter and result.merged_dir == run_dir.merged
