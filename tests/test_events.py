"""Run events: what a tiny-model run sends its listeners, in what order, and that metrics.jsonl,
train_summary.json and the console display are listeners of the same stream."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from tests.train.test_engine import make_config
from tunesmith.cli.console import ConsoleDisplay
from tunesmith.config import load_config
from tunesmith.errors import TrainingDiverged, UserError
from tunesmith.events import (
    CheckpointSaved,
    Events,
    Message,
    RunFailed,
    RunFinished,
    StepMetrics,
    TrainFinished,
    TrainStarted,
    Validation,
)
from tunesmith.pipeline import run


def _run_with_events(tmp_path, tiny_model_dir, memo_data, name="ev", **sections):
    seen = []
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, name, **sections))
    result = run(cfg, events=Events(seen.append))
    return result, seen


def test_a_run_sends_its_events_in_order_and_metrics_jsonl_is_their_rows(tmp_path, tiny_model_dir, memo_data):
    result, seen = _run_with_events(tmp_path, tiny_model_dir, memo_data, data={"val_split": 0.25},
                                    train={"max_steps": 6, "batch_size": 4, "eval_every": 3, "save_every": 3,
                                           "log_every": 2, "keep_checkpoints": 5})
    run_dir = tmp_path / "ev"
    kinds = [e.kind for e in seen]
    assert kinds == ["message"] * 4 + [
        "train_started",
        "step", "step", "validation", "step", "checkpoint",
        "step", "step", "validation", "step", "checkpoint",
        "train_finished", "message", "finished"], kinds
    messages = [e.text for e in seen if isinstance(e, Message)]
    assert messages[0].startswith("base model: ") and messages[3].startswith("method: lora, ")
    # What each "auto" setting became (early stopping: on, because validation runs during training).
    assert messages[2] == "train.early_stopping_patience: auto = 3 (validation during training)"
    assert messages[4].startswith("trained 6 steps: loss ")

    (started,) = [e for e in seen if isinstance(e, TrainStarted)]
    assert (started.total_steps, started.start_step) == (6, 0)
    steps = [e for e in seen if isinstance(e, StepMetrics)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6] and {e.total_steps for e in steps} == {6}
    # log_every=2 keeps steps 2, 4, 6 and the validated step 3; metrics.jsonl holds exactly those rows.
    assert [e.step for e in steps if e.logged] == [2, 3, 4, 6]
    on_disk = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e.metrics for e in steps if e.logged] == on_disk
    vals = [e for e in seen if isinstance(e, Validation)]
    assert [(v.step, v.val_loss) for v in vals] == [(r["step"], r["val_loss"]) for r in on_disk if "val_loss" in r]
    ckpts = [e for e in seen if isinstance(e, CheckpointSaved)]
    assert [(c.step, c.path) for c in ckpts] == [(s, str(run_dir / "checkpoints" / f"step-{s:06d}")) for s in (3, 6)]
    (finished,) = [e for e in seen if isinstance(e, TrainFinished)]
    assert finished.steps == 6 == result.train.steps
    assert finished.summary == json.loads((run_dir / "train_summary.json").read_text())
    assert seen[-1] == RunFinished(str(run_dir), at=seen[-1].at)
    for event in seen:  # every event is a flat JSON record a job service can store or stream
        record = json.loads(json.dumps(event.to_dict()))
        assert record["type"] == event.kind and isinstance(record["at"], float)


def test_run_failed_is_the_last_event_and_names_the_step(tmp_path, tiny_model_dir, memo_data):
    from tunesmith.methods import registry

    lora = registry.METHODS["lora"]
    real = type(lora).prepare

    def prepare_with_fault(model, method_cfg, lr):
        prepared = real(lora, model, method_cfg, lr)

        def poison():
            with torch.no_grad():
                next(p for p in prepared.model.parameters() if p.requires_grad).fill_(float("nan"))
        prepared.hooks.after_step = poison
        return prepared

    seen = []
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "nan", train={"max_steps": 6, "batch_size": 4}))
    lora.prepare = prepare_with_fault
    try:
        with pytest.raises(TrainingDiverged) as exc:
            run(cfg, events=Events(seen.append))
    finally:
        del lora.prepare
    assert [e.step for e in seen if isinstance(e, StepMetrics)] == [1]  # step 2's loss is NaN
    last = seen[-1]
    assert isinstance(last, RunFailed) and last.step == 1 and "at step 2" in last.error
    assert last.error == str(exc.value)
    assert not any(isinstance(e, (TrainFinished, RunFinished)) for e in seen)


def test_a_mistake_before_training_is_a_run_failed_without_a_step(tmp_path, tiny_model_dir):
    seen = []
    cfg = load_config(make_config(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl", "m"))
    with pytest.raises(UserError, match="missing.jsonl"):
        run(cfg, events=Events(seen.append))
    assert isinstance(seen[-1], RunFailed) and seen[-1].step is None and "missing.jsonl" in seen[-1].error


@pytest.mark.parametrize("progress", [True, False])
def test_console_display_shows_the_stream_and_quiet_keeps_only_the_lines(progress, tmp_path, tiny_model_dir, memo_data):
    _, seen = _run_with_events(tmp_path, tiny_model_dir, memo_data, train={"max_steps": 3, "batch_size": 4})
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, soft_wrap=True)  # as the CLI's
    with ConsoleDisplay(console, progress=progress) as display:
        for event in seen:
            display(event)
            if isinstance(event, TrainStarted):
                assert (display._train is not None) == progress
    assert display._train is None  # stopped at TrainFinished
    text = buffer.getvalue()
    for line in (e.text for e in seen if isinstance(e, Message)):
        assert line in text
    assert ("tok/s" in text) == progress  # the training bar's column
