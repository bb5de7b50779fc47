"""`tunesmith data split --val F --seed S` holds out exactly the examples a run with
`data.val_split: F` and `train.seed: S` validates on: both call data.split.split_items."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import load_config
from tunesmith.data import split as split_module
from tunesmith.data.split import split_file, split_items
from tunesmith.pipeline import load_data


@pytest.mark.parametrize("n, fraction, seed", [(2, 0.5, 0), (7, 0.3, 1), (50, 0.1, 7), (123, 0.25, 42), (40, 0.05, 3)])
def test_data_split_and_a_run_pick_the_same_validation_examples(n, fraction, seed, tmp_path):
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(n)]
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split_file(src, fraction, seed, tmp_path / "out")
    held_out = [json.loads(line)["id"] for line in (tmp_path / "out" / "data.val.jsonl").read_text().splitlines()]
    kept = [json.loads(line)["id"] for line in (tmp_path / "out" / "data.train.jsonl").read_text().splitlines()]

    cfg = load_config(None, [f"data.train={src}", f"data.val_split={fraction}", f"train.seed={seed}"])
    _, train, val = load_data(cfg)
    assert [s.id for s in val] == held_out and [s.id for s in train] == kept
    assert held_out  # at least one validation example whenever the fraction is above 0


def test_both_paths_go_through_the_one_split_function(tmp_path, monkeypatch):
    calls = []

    def recording(items, fraction, seed):
        calls.append((len(items), fraction, seed))
        return split_items(items, fraction, seed)

    monkeypatch.setattr(split_module, "split_items", recording)
    monkeypatch.setattr("tunesmith.pipeline.split_items", recording)
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(10)))
    split_file(src, 0.2, 5, tmp_path / "o")
    load_data(load_config(None, [f"data.train={src}", "data.val_split=0.2", "train.seed=5"]))
    assert calls == [(10, 0.2, 5), (10, 0.2, 5)]
