"""DPO on every registered method (the rows of the method matrix): each gets the right kind of
reference, starts at ln 2 (the step-0 check passes), and its DPO loss falls within a few steps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tunesmith.config import DataConfig, TrainConfig
from tunesmith.data.schema import Sample
from tunesmith.methods import get_method
from tunesmith.train.objective_options import DPOOptions
from tunesmith.train.objectives import DPO
from tunesmith.train.trainer import Trainer

from .test_matrix import CASES, load_base, method_cfg

# Which reference each kind of method gets (train/reference.py).
COPY = {"full", "freeze", "spectrum", "delta_lora"}          # base weights move: a frozen copy
# Adapter off != start: virtual tokens, and DoRA's norms over a 4-bit base. A frozen copy of the fresh adapter.
SNAPSHOT = {"prefix", "prompt", "qlora+dora"}


@pytest.fixture(scope="module")
def pairs(tokenizer):
    samples = [Sample(messages=[{"role": "user", "content": f"Code for item {i}?"}], chosen=f"ITEM-{i:03d}",
                      rejected=f"no code {i}") for i in range(8)]
    return DPO.tokenize(tokenizer, samples, DataConfig(max_len=64))[0]


@pytest.mark.parametrize("case_id", list(CASES))
def test_dpo_on_every_method(case_id, tiny_model_dir, tokenizer, pairs, tmp_path):
    cfg = method_cfg(case_id)
    _, _, lr = CASES[case_id]
    torch.manual_seed(0)
    prepared = get_method(cfg.name).prepare(load_base(tiny_model_dir, cfg), cfg, lr)
    objective = DPO.for_run(prepared, tokenizer, DataConfig(max_len=64), DPOOptions(beta=0.5))
    expected = "copy" if case_id in COPY else "start-adapter" if case_id in SNAPSHOT else "adapter-off"
    assert objective.reference.kind == expected, objective.reference.describe
    train = TrainConfig(max_steps=4, batch_size=8, lr=lr, warmup_ratio=0.0, scheduler="constant", precision="fp32")
    Trainer(train, DataConfig(max_len=64), prepared, tokenizer, pairs, [], tmp_path, objective=objective).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["loss"] - math.log(2)) < 0.01, rows[0]
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
