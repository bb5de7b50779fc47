"""Preference training end to end on the tiny model: DPO lifts preference accuracy on its pairs from
chance to >= 0.9, the step-0 check catches an SFT adapter measured against the wrong reference, every
kind of reference (adapter off, frozen start adapter, frozen full copy, prompt tuning's own forward)
starts at ln 2, and data an objective cannot train on is refused with the record's FILE:LINE."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from tunesmith.config import validate
from tunesmith.data.load import load_samples
from tunesmith.errors import DataError
from tunesmith.events import Events, Message, StepMetrics
from tunesmith.pipeline import run
from tunesmith.train.objectives.preference import ReferenceMismatch, displacement_watch

from ..conftest import write_jsonl

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
ANIMALS = ["cat", "dog", "horse", "mouse", "eagle", "snake", "tiger", "sheep"]


@pytest.fixture
def pairs_file(tmp_path):
    """Chosen answers name a colour, rejected ones an animal; which is more likely under the random
    base model varies from pair to pair, so its own preference is near chance."""
    rnd = random.Random(0)
    rows = [{"prompt": f"Pick one word for case {i}.", "chosen": f"{rnd.choice(COLOURS)}.",
             "rejected": f"{rnd.choice(ANIMALS)}."} for i in range(32)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _cfg(tmp_path, model_dir, data_file, objective: dict, name="run", **sections):
    raw = {"model": {"base": str(model_dir)}, "data": {"train": str(data_file), "max_len": 96},
           "method": {"name": "lora", "r": 8, "alpha": 16},
           "objective": objective,
           "train": {"max_steps": 24, "batch_size": 8, "lr": 1e-2, "warmup_ratio": 0.0, "scheduler": "constant",
                     "precision": "fp32"},
           "eval": {"enabled": False}, "output": {"dir": str(tmp_path / name)}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return validate(raw)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _accuracy(model_dir, adapter_dir, tokenizer, data):
    """Implicit-reward accuracy of the saved adapter (loaded with plain peft) on the pairs, and what
    the base model alone prefers."""
    from peft import PeftModel

    from tunesmith.eval.preference import pair_items, pair_scores, sequence_logps, summarize
    from tunesmith.models import load_model
    from tunesmith.models.adapters import adapters_off

    model = PeftModel.from_pretrained(load_model(str(model_dir)), str(adapter_dir)).eval()
    items = pair_items(tokenizer, load_samples(str(data)))
    policy = sequence_logps(model, items)
    with adapters_off(model):
        reference = sequence_logps(model, items)
    return summarize(pair_scores(policy, reference))


def test_dpo_lifts_preference_accuracy_from_chance_to_090(tmp_path, tiny_model_dir, tokenizer, pairs_file):
    events = []
    result = run(_cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "dpo", "beta": 0.1}), events=Events(events.append))
    rows = _rows(result.run_dir)
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-4 and rows[0]["reward_margin"] == 0.0
    assert rows[-1]["loss"] < 0.3 and rows[-1]["reward_accuracy"] >= 0.9
    assert {"rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected"} <= rows[-1].keys()
    summary = _accuracy(tiny_model_dir, result.run_dir / "adapter", tokenizer, pairs_file)
    assert 0.2 <= summary["reference_logp_accuracy"] <= 0.8      # the base alone: near chance
    assert summary["accuracy"] >= 0.9 and summary["margin_mean"] > 0
    said = [e.text for e in events if isinstance(e, Message)]
    assert any("reference: the starting weights: the same model with the adapter off" in t for t in said)


def test_orpo_and_kto_train_on_the_same_pairs(tmp_path, tiny_model_dir, pairs_file):
    for objective in ({"name": "orpo", "beta": 0.5}, {"name": "kto", "beta": 0.5}):
        result = run(_cfg(tmp_path, tiny_model_dir, pairs_file, objective, name=objective["name"]))
        rows = _rows(result.run_dir)
        assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], objective
        last = rows[-5:]   # one step's accuracy is over 8 pairs; five steps smooth it
        assert sum(r["reward_accuracy"] for r in last) / len(last) >= 0.9, objective


def test_the_step0_check_catches_an_sft_adapter_against_the_base(tmp_path, tiny_model_dir, pairs_file):
    sft = run(_cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "sft"}, name="sft",
                   train={"max_steps": 12}))
    adapter = sft.run_dir / "adapter"
    wrong = _cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "dpo", "reference": "base"}, name="wrong",
                 model={"adapter": str(adapter)})
    with pytest.raises(ReferenceMismatch, match=r"step 0: the policy does not start at the reference: the sigmoid DPO "
                                                r"loss is 0\.\d+, not ln 2") as caught:
        run(wrong)
    assert "model.adapter with objective.reference: auto" in str(caught.value)
    # The default: the SFT adapter, frozen, is the reference and the start of the policy.
    events = []
    right = run(_cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "dpo"}, name="right", model={"adapter": str(adapter)}),
                events=Events(events.append))
    rows = _rows(right.run_dir)
    assert abs(rows[0]["loss"] - math.log(2)) < 0.01 and rows[-1]["loss"] < rows[0]["loss"]
    assert any("reference: the adapter in model.adapter, frozen" in e.text for e in events if isinstance(e, Message))
    saved = right.run_dir / "adapter"
    assert not (saved / "reference").exists()      # only the trained adapter is saved
    # The policy started from the SFT adapter, not from zero: its first chosen log-prob is the SFT model's.
    base_rows = _rows(run(_cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "dpo"}, name="fresh",
                              train={"max_steps": 1})).run_dir)
    assert rows[0]["logps_chosen"] > base_rows[0]["logps_chosen"] + 1.0


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "prompt", "num_virtual_tokens": 4}])
def test_full_fine_tuning_and_prompt_tuning_start_at_ln2_and_learn(method, tmp_path, tiny_model_dir, pairs_file):
    lr = 1e-3 if method["name"] == "full" else 3e-2
    result = run(_cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "dpo"}, method=method,
                      train={"lr": lr, "max_steps": 12}))
    rows = _rows(result.run_dir)
    assert abs(rows[0]["loss"] - math.log(2)) < 0.01
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]


def test_settings_that_make_no_sense_with_an_objective_are_config_errors(tmp_path, tiny_model_dir, pairs_file):
    from tunesmith.errors import ConfigError

    cases = [({"name": "dpo"}, {"data": {"train_on_inputs": True}}, "data.train_on_inputs: objective 'dpo'"),
             ({"name": "orpo"}, {"data": {"overlong": "truncate"}}, "data.overlong=truncate: objective 'orpo'"),
             ({"name": "kto"}, {"train": {"micro_batch_size": 1}}, "objective 'kto' needs at least 2 examples"),
             ({"name": "dpo"}, {"method": {"name": "full"}, "model": {"adapter": str(tmp_path)}},
              "method 'full' trains the model's own weights"),
             ({"name": "sft"}, {"model": {"adapter": str(tmp_path)}}, "is not a PEFT adapter folder")]
    for k, (objective, sections, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            run(_cfg(tmp_path, tiny_model_dir, pairs_file, objective, name=f"bad{k}", **sections))
        assert not (tmp_path / f"bad{k}" / "metrics.jsonl").exists()


def test_data_an_objective_cannot_use_is_refused_with_its_line(tmp_path, tiny_model_dir, memo_data):
    with pytest.raises(DataError, match=r"memo\.jsonl:1: objective 'dpo' trains on preference pairs"):
        run(_cfg(tmp_path, tiny_model_dir, memo_data, {"name": "dpo"}))
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "a?", "completion": "b", "label": True},
                                               {"prompt": "c?", "completion": "d", "label": False}])
    with pytest.raises(DataError, match=r"kto\.jsonl:1: objective 'sft' does not train on feedback"):
        run(_cfg(tmp_path, tiny_model_dir, kto, {"name": "sft"}, name="sftkto"))


def test_the_cli_reports_a_wrong_reference_without_a_traceback(tmp_path, tiny_model_dir, pairs_file):
    import yaml

    sft = run(_cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "sft"}, name="sft", train={"max_steps": 12}))
    cfg = _cfg(tmp_path, tiny_model_dir, pairs_file, {"name": "dpo", "reference": "base"}, name="cli",
               model={"adapter": str(sft.run_dir / "adapter")})
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    r = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(path), "--quiet"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "not ln 2" in r.stderr + r.stdout


def test_a_falling_chosen_reward_warns_once_with_what_to_try():
    said = []
    events = Events(said.append)
    watch = displacement_watch(events)
    for step, reward in enumerate([0.01, -0.02, -0.05, -0.08, -0.12, -0.2, -0.3], start=1):
        watch(StepMetrics(step, 7, {"loss": 0.5, "rewards_chosen": reward}))
    warnings = [e for e in said if isinstance(e, Message)]
    assert len(warnings) == 1 and warnings[0].level == "warning"
    assert "likelihood displacement" in warnings[0].text and "objective.sft_weight" in warnings[0].text
    quiet = []
    watch = displacement_watch(Events(quiet.append))
    for step, reward in enumerate([0.01, 0.05, 0.1, 0.2, 0.3, 0.4], start=1):
        watch(StepMetrics(step, 6, {"loss": 0.5, "rewards_chosen": reward}))
    assert quiet == []


def test_the_objective_section_names_the_objective_and_its_keys():
    from tunesmith.errors import ConfigError

    cfg = validate({"objective": {"name": "dpo", "beta": 0.3, "loss_type": "ipo"}})
    assert (cfg.objective.name, cfg.objective.beta, cfg.objective.loss_type) == ("dpo", 0.3, "ipo")
    with pytest.raises(ConfigError, match=r"unknown key 'objective.betta' for objective 'dpo' \(did you mean 'objective.beta'\?\)"):
        validate({"objective": {"name": "dpo", "betta": 0.3}})
    with pytest.raises(ConfigError, match=r"unknown key 'objective.loss_type' for objective 'orpo'; objective 'orpo' takes: beta"):
        validate({"objective": {"name": "orpo", "loss_type": "ipo"}})
    with pytest.raises(ConfigError, match=r"unknown objective 'dop' \(did you mean 'dpo'\?\)"):
        validate({"objective": {"name": "dop"}})
    assert validate({}).objective.name == "sft"
    torch.manual_seed(0)
