import subprocess
import sys

import pytest

from tunesmith.config import RunConfig, load_config, starter_yaml, validate
from tunesmith.errors import ConfigError


def test_defaults_cover_the_documented_vocabulary():
    cfg = RunConfig()
    for key in ["model.base", "data.train", "data.val", "data.format", "data.max_len", "method.name", "method.r",
                "method.alpha", "method.dropout", "method.target_modules", "train.epochs", "train.max_steps",
                "train.lr", "train.batch_size", "train.micro_batch_size", "train.save_every", "train.eval_every",
                "train.seed", "eval.metrics", "eval.baselines", "output.dir"]:
        section, name = key.split(".")
        assert name in type(getattr(cfg, section)).model_fields, key


def test_every_key_has_a_description():
    for section in RunConfig.model_fields.values():
        for name, field in section.annotation.model_fields.items():
            assert field.description, name


def test_misspelled_key_suggests(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rat: 1\nmethod:\n  rank: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "unknown key 'train.learning_rat'" in e.value.message
    assert "did you mean 'method.r'" not in e.value.message  # 'rank' is not close enough to guess wrongly
    assert f"{p}:" in e.value.message or str(p) in e.value.message


def test_did_you_mean():
    with pytest.raises(ConfigError) as e:
        validate({"train": {"lrr": 1e-4}}, "x.yaml")
    assert "did you mean 'train.lr'" in e.value.message


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError) as e:
        validate({"train": {"batch_size": "eight"}}, "x.yaml")
    assert "train.batch_size" in e.value.message and "integer" in e.value.message


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  train: d.jsonl\n")
    cfg = load_config(p, ["train.lr=1e-4", "data.packing=false", "method.target_modules=[q_proj, v_proj]"])
    assert cfg.train.lr == 1e-4 and cfg.data.packing is False
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.train == str(tmp_path / "d.jsonl")  # relative to the config file


def test_starter_round_trips():
    import yaml

    cfg = validate(yaml.safe_load(starter_yaml()))
    assert cfg == RunConfig()


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, **kw)


def test_cli_config_show_misspelled_key_exits_nonzero_without_traceback(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  lr: 1\n")
    r = run_cli("config", "show", str(p))
    assert r.returncode != 0
    assert "did you mean 'train'" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_wrong_type_names_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: lots\n")
    r = run_cli("config", "show", str(p))
    assert r.returncode != 0 and "train.epochs" in r.stderr and "number" in r.stderr


def test_cli_help_lists_verbs():
    r = run_cli("--help")
    assert r.returncode == 0
    for verb in ("quickstart", "train", "eval", "merge", "config", "data", "methods"):
        assert verb in r.stdout


def test_cli_debug_shows_traceback(tmp_path):
    r = run_cli("--debug", "config", "show", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "Traceback" in r.stderr
