"""How a job request becomes a run config (no server, no model)."""

from __future__ import annotations

import pytest

from tunesmith.config import validate
from tunesmith.errors import ConfigError
from tunesmith.serve.finetune.job_spec import JobCreate, build_config, fine_tuned_name, reported_hyperparameters


def config(records: int = 5, **body):
    return build_config(JobCreate(model="base", training_file="file-x", **body), base_path="/m", train_path="/t.jsonl",
                        train_records=records, val_path=None, out_dir="/out")


def test_auto_takes_the_run_configs_auto_rules_as_numbers_and_draws_a_seed():
    raw, seed = config(records=20)
    cfg = validate(raw)
    # 20 records at batch 8: 3 steps a pass, so 5 passes (the most); LoRA's rate (no config.json at
    # /m, so no width scaling), reported as multiplier 1.
    assert cfg.train.epochs == 5 and cfg.train.lr == 1e-3
    assert reported_hyperparameters(raw) == {"n_epochs": 5, "batch_size": 8, "learning_rate_multiplier": 1.0}
    dpo, _ = config(records=400, method={"type": "dpo"})
    assert validate(dpo).train.lr == pytest.approx(2e-4) and validate(dpo).train.epochs == 2   # 0.2 x LoRA's rate
    assert cfg.train.batch_size == 8 and cfg.train.save_every == 3          # a checkpoint per epoch: ceil(20 / 8)
    assert cfg.train.seed == seed and cfg.data.val_split == 0 and cfg.eval.enabled is False
    assert cfg.objective.name == "sft" and cfg.method.name == "lora"
    assert config(records=3)[0]["train"]["batch_size"] == 3                    # auto: at most the examples


def test_numbers_map_onto_the_run_config_and_the_method_section_wins():
    raw, seed = config(seed=9, hyperparameters={"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 0.5},
                       method={"type": "supervised", "name": "dora",
                               "supervised": {"hyperparameters": {"n_epochs": 3}}})
    cfg = validate(raw)
    assert (cfg.train.epochs, cfg.train.batch_size, seed, cfg.method.name) == (3, 2, 9, "dora")
    assert cfg.train.lr == pytest.approx(1e-3 * 0.5)        # dora's auto rate (LoRA family: 1e-3) x 0.5
    assert reported_hyperparameters(raw) == {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": pytest.approx(0.5)}


def test_dpo_and_metadata_run_config_keys():
    raw, _ = config(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}},
                    metadata={"train.max_steps": "7", "method.r": "4", "team": "ops"})
    cfg = validate(raw)
    assert cfg.objective.name == "dpo" and cfg.objective.beta == pytest.approx(0.3)
    assert cfg.train.max_steps == 7 and cfg.method.r == 4
    assert reported_hyperparameters(raw)["beta"] == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="metadata: unknown key 'train.max_stepz'"):
        config(metadata={"train.max_stepz": "7"})


def test_fine_tuned_model_name_is_openais_form():
    job = {"org": "acme", "id": "ftjob-abc", "request": {"suffix": "orders"}}
    assert fine_tuned_name("default", job) == "ft:default:acme:orders:ftjob-abc"
    assert fine_tuned_name("default", {**job, "request": {}}) == "ft:default:acme::ftjob-abc"


@pytest.mark.parametrize("key", ["output.dir", "model.base", "model.adapter", "data.train", "data.val", "eval.data",
                                 "eval.judge_url", "eval.compare_to", " output.merge"])
def test_a_request_cannot_set_paths_urls_or_the_base(key):
    with pytest.raises(ConfigError, match="is set by the fine-tuning service"):
        config(metadata={key: "/etc/passwd"})


def test_a_method_that_rewrites_the_model_is_refused():
    with pytest.raises(ConfigError, match="trains the whole model"):
        config(method={"type": "supervised", "name": "full"})


@pytest.mark.parametrize("argv, message", [
    (["--tenant", "oops"], "--tenant 'oops': expected ORG=KEY"),
    (["--tenant", "a=k1", "--tenant", "a=k2"], "the organization 'a' is given twice"),
    (["--tenant", "a=k1", "--tenant", "b=k1"], "that key is already another organization's"),
    (["--tenant", "a=k1", "--api-key", "k1"], "the same key is also given with --tenant"),
    (["--job-workers", "-1"], "--job-workers must be 0 or more"),
    (["--max-upload-bytes", "0"], "--max-upload-bytes must be at least 1"),
])
def test_serve_refuses_bad_service_flags_before_loading_a_model(argv, message, capsys):
    from tunesmith.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--model", "/no/such/model", *argv])
    captured = capsys.readouterr()
    assert info.value.code == 2 and message in captured.err and "Traceback" not in captured.err
