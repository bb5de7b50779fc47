"""Training objectives: the registry, SFT as the trainer's default, and an objective registered inside
a test whose own metric the trainer aggregates as exactly as the loss."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.data.load import load_samples
from tunesmith.data.tokenize import tokenize_all
from tunesmith.errors import UserError
from tunesmith.methods import get_method
from tunesmith.models import load_model
from tunesmith.train.loss import CausalLMLoss
from tunesmith.train.objective_options import OPTIONS
from tunesmith.train.objectives import OBJECTIVES, SFT, ObjectiveLoss, get_objective, register_objective
from tunesmith.train.trainer import Trainer


def _cfg(tiny_model_dir, memo_data, *overrides):
    return load_config(None, [f"model.base={tiny_model_dir}", f"data.train={memo_data}", "data.max_len=64",
                              "method.name=lora", "method.r=4", "method.alpha=8", "method.dropout=0",
                              "train.max_steps=4", "train.batch_size=8", "train.lr=1e-2", "train.warmup_ratio=0",
                              "train.scheduler=constant", "train.precision=fp32", *overrides])


def _prepared(cfg, tiny_model_dir):
    torch.manual_seed(0)
    return get_method(cfg.method.name).prepare(load_model(str(tiny_model_dir)), cfg.method, cfg.train.lr)


def _examples(tokenizer, memo_data):
    return tokenize_all(tokenizer, load_samples(str(memo_data)), max_len=64)[0]


def test_the_registry_names_sft_and_suggests_on_a_typo():
    assert get_objective("sft") is SFT and OBJECTIVES["sft"] is SFT
    with pytest.raises(UserError, match="unknown training objective 'stf' \\(did you mean 'sft'\\?\\)"):
        get_objective("stf")


def test_sft_reads_the_run_settings_and_its_loss_is_the_library_loss(tiny_model_dir, tokenizer, memo_data):
    cfg = _cfg(tiny_model_dir, memo_data)
    prepared = _prepared(cfg, tiny_model_dir)
    sft = SFT.for_run(prepared, tokenizer, cfg.data)
    assert (sft.max_len, sft.pad_id, sft.pack, sft.fast) == (64, tokenizer.pad_token_id, True, True)
    examples = _examples(tokenizer, memo_data)[:5]
    batch = sft.collate(examples)
    with torch.no_grad():
        out = sft.loss(prepared.model, batch)
        nll, n = CausalLMLoss(prepared.model)(batch.input_ids, batch.position_ids, batch.targets)
    assert isinstance(out, ObjectiveLoss) and out.metrics == {}
    assert float(out.loss) == float(nll) and int(out.units) == int(n) == sft.units(batch)
    assert sft.tokens(batch) == (sum(len(e) for e in examples), batch.input_ids.numel())
    # Prompt tuning prepends virtual tokens per row: one example per row, the model's own forward.
    prompt_cfg = _cfg(tiny_model_dir, memo_data, "method.name=prompt", "method.num_virtual_tokens=4",
                      "method.r=8", "method.alpha=16")
    prompt = SFT.for_run(_prepared(prompt_cfg, tiny_model_dir), tokenizer, prompt_cfg.data)
    assert (prompt.pack, prompt.flat, prompt.fast) == (False, False, False)


@dataclass
class _SFTWithProbe(SFT):
    """SFT that also reports its own loss sum as a metric: the logged metric must equal the loss."""
    name = "sft_probe"
    metric_names = ("probe_nll",)

    def loss(self, model, batch):
        out = super().loss(model, batch)
        return ObjectiveLoss(out.loss, out.units, {"probe_nll": out.loss.detach()})


@pytest.fixture
def probe_objective():
    register_objective(_SFTWithProbe)
    yield "sft_probe"
    del OBJECTIVES["sft_probe"]
    OPTIONS.pop("sft_probe", None)


def test_an_objective_registered_in_a_test_trains_and_its_metric_is_token_weighted(
        probe_objective, tiny_model_dir, tokenizer, memo_data, tmp_path):
    examples = _examples(tokenizer, memo_data)
    logs = {}
    for micro in (8, 2):
        cfg = _cfg(tiny_model_dir, memo_data, f"train.micro_batch_size={micro}")
        trainer = Trainer(cfg.train, cfg.data, _prepared(cfg, tiny_model_dir), tokenizer, examples, [],
                          tmp_path / f"m{micro}", objective=probe_objective)
        assert isinstance(trainer.objective, _SFTWithProbe)
        trainer.fit()
        logs[micro] = [json.loads(line) for line in (tmp_path / f"m{micro}" / "metrics.jsonl").read_text().splitlines()]
    for rows in logs.values():
        assert len(rows) == 4 and all(abs(r["probe_nll"] - r["loss"]) < 1e-6 for r in rows)
    assert max(abs(a["probe_nll"] - b["probe_nll"]) for a, b in zip(logs[8], logs[2])) < 1e-5
    assert logs[8][-1]["loss"] < logs[8][0]["loss"]  # it trained


def test_the_trainer_takes_an_objective_instance(tiny_model_dir, tokenizer, memo_data, tmp_path):
    cfg = _cfg(tiny_model_dir, memo_data, "train.max_steps=1")
    prepared = _prepared(cfg, tiny_model_dir)
    padded = SFT(max_len=64, pad_id=0, pack=False)
    trainer = Trainer(cfg.train, cfg.data, prepared, tokenizer, _examples(tokenizer, memo_data), [], tmp_path,
                      objective=padded)
    (batch,) = list(trainer._micro_batches(0))
    assert trainer.objective is padded and batch.input_ids.shape[0] == 8  # one example per row: no packing
