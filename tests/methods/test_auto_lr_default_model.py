"""`train.lr: auto` makes the slow learners learn: with everything else at its default, VeRA, prompt
tuning, prefix tuning and IA3 take a 2-layer cut of the default model most of the way down in 40
steps, as LoRA does (at one shared rate of 3e-3, VeRA and prompt tuning did not learn at all)."""

from __future__ import annotations

import json
import statistics

import pytest

from tunesmith.config import RunConfig
from tunesmith.events import Events
from tunesmith.pipeline import run

QUICKSTART = "src/tunesmith/assets/quickstart/train.jsonl"


@pytest.fixture(scope="module")
def cut_model(default_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("cut2")
    model = AutoModelForCausalLM.from_pretrained(str(default_model_dir))
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(default_model_dir)).save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "vera", "prompt", "prefix", "ia3"])
def test_every_method_learns_at_its_auto_rate(method, cut_model, tmp_path):
    from tests.conftest import REPO

    cfg = RunConfig.model_validate({
        "model": {"base": str(cut_model)}, "data": {"train": str(REPO / QUICKSTART), "max_len": 256},
        "method": {"name": method}, "train": {"max_steps": 40, "batch_size": 8, "precision": "fp32", "seed": 0},
        "eval": {"enabled": False}, "output": {"dir": str(tmp_path / method)}})
    assert cfg.train.lr == "auto"
    run(cfg, events=Events())
    rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    # The cut starts near 20; LoRA at its rate ends near 4 (scripts/probe_method_lr.py).
    assert losses[0] > 15
    assert statistics.mean(losses[-5:]) < 0.4 * losses[0], (method, losses[0], losses[-5:])
