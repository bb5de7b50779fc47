"""Command-line options generated from pydantic fields (cli/options.py), and `tunesmith eval`'s use of them:
every eval option's help is its EvalConfig field's description, and a flag's value reaches the EvalConfig."""

from __future__ import annotations

import json
import re

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from tunesmith.cli import main
from tunesmith.cli.options import build_model, model_options
from tunesmith.config import EvalConfig
from tunesmith.errors import ConfigError


class Toy(BaseModel):
    name: str = Field("x", description="the toy's name")
    size: int = Field(3, ge=1, description="how big it is")
    ratio: float | None = Field(None, description="an optional number")
    fast: bool = Field(True, description="go fast")
    tags: list[str] = Field(default_factory=lambda: ["a", "b"], description="labels")
    ks: list[int] = Field(default_factory=lambda: [1], description="integers")
    hidden: str = Field("h", description="not an option")


def toy_app(**options) -> tuple[typer.Typer, list]:
    got = []
    app = typer.Typer()

    @app.command()
    @model_options(Toy, into="values", exclude={"hidden"}, flags={"size": ("--size", "-s")},
                   help_extra={"name": "(say it loud)"}, **options)
    def cmd(verbose: bool = typer.Option(False, help="talk more"), values: dict | None = None):
        got.append((verbose, build_model(Toy, values, cmd.flags)))

    @app.command()
    def other():  # a second command, so typer keeps `cmd` as a subcommand
        pass
    return app, got


def plain(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_defaults_types_and_help_come_from_the_fields():
    app, got = toy_app()
    runner = CliRunner()
    assert runner.invoke(app, ["cmd"]).exit_code == 0
    assert got[-1] == (False, Toy())
    result = runner.invoke(app, ["cmd", "--name", "y", "-s", "7", "--ratio", "0.5", "--no-fast", "--tags", "p, q,",
                                 "--ks", "2,3", "--verbose"])
    assert result.exit_code == 0, result.output
    assert got[-1] == (True, Toy(name="y", size=7, ratio=0.5, fast=False, tags=["p", "q"], ks=[2, 3]))
    assert runner.invoke(app, ["cmd", "--tags", ""]).exit_code == 0 and got[-1][1].tags == []
    assert runner.invoke(app, ["cmd", "--hidden", "z"]).exit_code != 0  # excluded: no such option

    helptext = plain(runner.invoke(app, ["cmd", "--help"], env={"COLUMNS": "300"}).output)
    for text in ("the toy's name (say it loud)", "how big it is", "go fast", "--fast --no-fast",
                 "labels (comma-separated)", "[default: a,b]", "talk more", "-s"):
        assert text in helptext, text


def test_bad_values_are_config_errors_naming_the_flag():
    app, got = toy_app()
    result = CliRunner().invoke(app, ["cmd", "--ks", "1,two"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith("--ks: expected comma-separated integers, got '1,two'")
    result = CliRunner().invoke(app, ["cmd", "-s", "0"])
    assert isinstance(result.exception, ConfigError) and str(result.exception).startswith("--size: ")


def test_repeatable_lists():
    app, got = toy_app(lists="repeat")
    assert CliRunner().invoke(app, ["cmd", "--tags", "p", "--tags", "q"]).exit_code == 0
    assert got[-1][1].tags == ["p", "q"]


def test_unknown_or_clashing_fields_are_refused():
    with pytest.raises(ValueError, match="no field"):
        model_options(Toy, into="v", exclude={"nope"})
    with pytest.raises(TypeError, match="clash"):
        @model_options(Toy, into="v")
        def cmd(name: str = "", v: dict | None = None):
            pass


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
