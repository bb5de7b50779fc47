"""train.gradient_checkpointing: on through the current transformers API (no FutureWarning in the
user's output), really on, and the same numbers as without it."""

from __future__ import annotations

import json
import warnings

from tests.train.test_engine import make_config
from tunesmith.config import load_config
from tunesmith.events import Events
from tunesmith.pipeline import run


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_checkpointing_trains_the_same_numbers_without_future_warnings(tmp_path, tiny_model_dir, memo_data, monkeypatch):
    from tunesmith.train import trainer as trainer_module

    enabled = []
    real_enable = trainer_module.enable_activation_checkpointing

    def enable_and_look(model):
        real_enable(model)
        enabled.append(any(getattr(m, "gradient_checkpointing", False) for m in model.modules()))

    monkeypatch.setattr(trainer_module, "enable_activation_checkpointing", enable_and_look)
    train = {"max_steps": 3, "batch_size": 4}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        on = run(load_config(make_config(tmp_path, tiny_model_dir, memo_data, "on",
                                         train={**train, "gradient_checkpointing": True})), events=Events())
    ours = [str(w.message) for w in caught if issubclass(w.category, FutureWarning) and "checkpointing" in str(w.message)]
    assert ours == []
    assert enabled == [True]
    off = run(load_config(make_config(tmp_path, tiny_model_dir, memo_data, "off", train=train)), events=Events())
    a, b = _losses(on.run_dir), _losses(off.run_dir)
    assert len(a) == 3 and max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)
