"""`tunesmith eval`'s options are generated from EvalConfig (cli/options.py): every eval option's help is
its field's description, and a flag's value reaches the EvalConfig."""

from __future__ import annotations

import json
import re

import pytest

from tunesmith.cli import main
from tunesmith.config import EvalConfig


def plain(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_eval_help_shows_every_option_description_from_its_field(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps and truncates to the terminal width
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    helptext = plain(capsys.readouterr().out)
    flags = 0
    for name, field in EvalConfig.model_fields.items():
        if name in ("enabled", "data", "overfit_gap"):
            continue
        assert "--" + name.replace("_", "-") in helptext, name
        assert " ".join(field.description.split()) in helptext, name
        flags += 1
    assert flags == len(EvalConfig.model_fields) - 3


def test_eval_flag_values_reach_the_eval_config(tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith.eval import runner

    seen = {}

    def fake_run_eval(systems, tokenizer, samples, cfg, out_dir, **kwargs):
        seen["cfg"] = cfg
        return runner.EvalResult({"title": "t", "n_examples": 0, "metrics": [], "systems": {}})

    monkeypatch.setattr(runner, "run_eval", fake_run_eval)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    try:
        main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "-o", str(tmp_path / "out"), "--quiet",
              "--metrics", "exact_match, rouge1", "--baselines", "zero-shot", "--few-shot-k", "2",
              "--no-perplexity", "--code-timeout-s", "2.5", "--pass-k", "1,2", "--code-samples", "4",
              "--temperature", "0.5", "--lm-eval-tasks", "arc_easy,boolq", "--lm-eval-limit", "7",
              "--regression-acc-drop", "0.2"])
    except SystemExit as exc:
        assert not exc.code
    cfg = seen["cfg"]
    assert cfg == EvalConfig(metrics=["exact_match", "rouge1"], baselines=["zero-shot"], few_shot_k=2, perplexity=False,
                             code_timeout_s=2.5, pass_k=[1, 2], code_samples=4, temperature=0.5,
                             lm_eval_tasks=["arc_easy", "boolq"], lm_eval_limit=7, regression_acc_drop=0.2)


@pytest.mark.parametrize("value,expected", [(None, "auto"), ("auto", "auto"), ("300", 300)])
def test_max_new_tokens_takes_auto_or_a_number(value, expected, tiny_model_dir, tmp_path, monkeypatch):
    from tunesmith.eval import runner

    seen = {}

    def fake_run_eval(systems, tokenizer, samples, cfg, out_dir, **kwargs):
        seen["cfg"] = cfg
        return runner.EvalResult({"title": "t", "n_examples": 0, "metrics": [], "systems": {}})

    monkeypatch.setattr(runner, "run_eval", fake_run_eval)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "-o", str(tmp_path / "out"), "--quiet",
            "--baselines", "zero-shot"] + (["--max-new-tokens", value] if value else [])
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code
    assert seen["cfg"].max_new_tokens == expected


def test_a_bad_max_new_tokens_names_the_flag(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "-o", str(tmp_path / "out"),
              "--max-new-tokens", "lots"])
    assert exc.value.code == 2
    assert "--max-new-tokens: expected 'auto' or a whole number above 0" in capsys.readouterr().err
