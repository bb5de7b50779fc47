"""`train.lr`, `train.epochs`, `data.val_split`, `train.eval_every` and `train.early_stopping_patience`
set to "auto": the rules, and a run that resolves them, says so and saves the numbers."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import write_jsonl
from tunesmith.config import RunConfig, TrainConfig, load_config, validate
from tunesmith.errors import ConfigError, UserError
from tunesmith.events import Events, Message
from tunesmith.methods.registry import METHODS
from tunesmith.pipeline import run
from tunesmith.train import auto


def test_lr_is_the_methods_rate_scaled_down_for_wider_models_and_preference_objectives():
    assert auto.auto_lr(1e-3, 576) == 1e-3
    assert auto.auto_lr(1e-3, 64) == 1e-3                  # never raised for narrow (test) models
    assert auto.auto_lr(1e-3, 4096) == pytest.approx(3.75e-4, rel=1e-3)
    assert auto.auto_lr(1e-3, 576, 0.2) == pytest.approx(2e-4)
    assert auto.auto_lr(1e-3, None) == 1e-3


def test_slow_learners_get_far_higher_rates_than_lora():
    lora = METHODS["lora"].default_lr
    for name in ("vera", "prompt", "prefix", "ia3"):
        assert METHODS[name].default_lr >= 10 * lora, name
    assert METHODS["full"].default_lr < lora


@pytest.mark.parametrize(("n", "batch", "epochs"), [(300, 8, 3.0), (1000, 8, 1.0), (40, 8, 5.0), (792, 8, 2.0)])
def test_epochs_give_small_data_at_least_100_steps_and_at_most_5_passes(n, batch, epochs):
    assert auto.auto_epochs(n, batch) == epochs


def test_validation_split_and_early_stopping_only_when_the_data_allows():
    assert auto.auto_val_fraction(199) == 0.0
    assert auto.auto_val_fraction(300) == 0.1
    assert auto.auto_val_fraction(5000) == pytest.approx(200 / 5000)
    assert auto.auto_eval_every(120, 40, has_val=True) == 12
    assert auto.auto_eval_every(40, 40, has_val=True) == 0          # one pass: validate at the end only
    assert auto.auto_eval_every(120, 40, has_val=False) == 0
    assert auto.auto_patience(12) == 3 and auto.auto_patience(0) == 0


def test_auto_and_numbers_validate_and_bad_values_name_the_key():
    cfg = RunConfig.model_validate({"train": {"lr": "1e-3", "epochs": 2, "eval_every": "auto"},
                                    "data": {"val_split": 0}})
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.eval_every, cfg.data.val_split) == (1e-3, 2.0, "auto", 0.0)
    assert RunConfig().train.lr == "auto" and RunConfig().data.val_split == "auto"
    for section, key, value in [("train", "lr", 0), ("train", "lr", "fast"), ("train", "epochs", -1),
                                ("data", "val_split", 1.5), ("train", "early_stopping_patience", -2)]:
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            validate({section: {key: value}}, "run.yaml")


def test_the_trainer_refuses_an_unresolved_rate(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.config import DataConfig
    from tunesmith.data.schema import Sample
    from tunesmith.data.tokenize import tokenize_all
    from tunesmith.methods import method_options, prepare_method
    from tunesmith.train.trainer import Trainer

    prepared = prepare_method(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), method_options(name="lora"), 1e-3)
    data = [Sample(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])]
    items, _ = tokenize_all(tokenizer, data, max_len=64)
    with pytest.raises(UserError, match="train.lr is 'auto'"):
        Trainer(TrainConfig(max_steps=1), DataConfig(max_len=64), prepared, tokenizer, items, [], tmp_path)


def chats(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                          {"role": "assistant", "content": f"ITEM-{i:03d}-{'ABCDEFGH'[i % 8]}"}]} for i in range(n)]


def test_a_run_on_200_examples_resolves_every_auto_states_it_and_saves_the_numbers(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chats(200))
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"base": str(tiny_model_dir)}, "data": {"train": str(data)},
        "method": {"name": "lora", "r": 4}, "train": {"batch_size": 32, "precision": "fp32"},
        "eval": {"enabled": False}, "output": {"dir": str(tmp_path / "out")}}))
    seen = []
    result = run(load_config(cfg_path), events=Events(seen.append))
    messages = [e.text for e in seen if isinstance(e, Message)]
    line = next(m for m in messages if "train.lr: auto" in m)
    # 200 examples: 20 held out; 180 at batch 32 = 6 steps a pass, so 17 passes would be needed for
    # 100 steps: capped at 5 (30 steps), validated every 3 steps with early stopping.
    assert line == ("data.val_split: auto = 0.1 (20 of 200 examples held out); train.lr: auto = 0.001 (lora's 0.001); "
                    "train.epochs: auto = 5 (180 examples, batch 32: 6 steps a pass); "
                    "train.eval_every: auto = 3 (10 validations over 30 steps); "
                    "train.early_stopping_patience: auto = 3 (validation during training)")
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert (saved["train"]["lr"], saved["train"]["epochs"], saved["train"]["eval_every"],
            saved["train"]["early_stopping_patience"], saved["data"]["val_split"]) == (0.001, 5.0, 3, 3, 0.1)
    stats = json.loads((tmp_path / "out" / "data_stats.json").read_text())
    assert stats["auto"]["train.epochs"] == {"value": 5.0, "reason": "180 examples, batch 32: 6 steps a pass"}
    assert stats["val"]["examples"] == 20
    rows = [json.loads(r) for r in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    validated = [r["step"] for r in rows if "val_loss" in r]
    assert validated[:3] == [3, 6, 9]
    assert result.train.best_val_loss == min(r["val_loss"] for r in rows if "val_loss" in r)
    assert result.train.steps == 30 or result.train.stopped_early
    # The saved config re-runs with the same numbers and announces nothing.
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again.train.resolved() and again.data.val_split == 0.1
