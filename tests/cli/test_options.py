"""CLI options generated from pydantic fields (cli/options.py): a toy model through every field kind,
and `tunesmith serve`, whose flags come from ServeOptions."""

from __future__ import annotations

from typing import Literal

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from tunesmith.cli.options import Flag, comma_separated, options_from
from tunesmith.errors import ConfigError

WIDE = {"COLUMNS": "240", "TERMINAL_WIDTH": "240"}


class Toy(BaseModel):
    name: str = Field("toy", description="what it is called")
    steps: int = Field(3, ge=1, description="how many steps")
    rate: float = Field(0.5, description="a rate")
    fast: bool = Field(False, description="go fast")
    tags: list[str] = Field(default_factory=list, description="tags (repeatable)")
    mode: Literal["a", "b"] = Field("a", description="one of a or b")
    note: str | None = Field(None, description="an optional note")
    pairs: dict[str, str] = Field(default_factory=dict, description="K=V pairs")


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def toy_app(seen: list):
    app = typer.Typer()

    @app.command()
    @options_from(Toy, into="toy", flags={"name": Flag("--name", "-n"), "pairs": Flag("--pair", cli_type=list[str], parse=_pairs)})
    def run(toy: Toy, extra: int = typer.Option(0, help="not a Toy field")):
        seen.append((toy, extra))

    @app.command()
    def other():   # a second command, so `run` is addressed by name
        pass

    return app


def _params(app):
    command = typer.main.get_command(app).commands["run"]
    return {p.name: p for p in command.params}


def test_each_field_becomes_one_option_with_its_description_and_default():
    params = _params(toy_app([]))
    assert list(params)[:8] == list(Toy.model_fields)          # the model's options first, in field order
    for name, field in Toy.model_fields.items():
        assert params[name].help == field.description, name
    assert params["name"].opts == ["--name", "-n"]
    assert params["steps"].opts == ["--steps"] and params["steps"].default == 3
    assert params["fast"].opts == ["--fast"] and params["fast"].secondary_opts == ["--no-fast"]
    assert params["tags"].multiple and list(params["tags"].default or []) == []
    assert params["pairs"].opts == ["--pair"] and params["pairs"].multiple
    assert params["extra"].help == "not a Toy field"


def test_command_line_values_reach_the_model():
    seen = []
    result = CliRunner().invoke(toy_app(seen), ["run", "-n", "x", "--steps", "7", "--rate", "0.25", "--fast",
                                                "--tags", "p", "--tags", "q", "--mode", "b", "--note", "hi",
                                                "--pair", "k=v", "--pair", "a=b", "--extra", "2"])
    assert result.exit_code == 0, result.output
    toy, extra = seen[0]
    assert toy == Toy(name="x", steps=7, rate=0.25, fast=True, tags=["p", "q"], mode="b", note="hi",
                      pairs={"k": "v", "a": "b"})
    assert extra == 2
    seen.clear()
    assert CliRunner().invoke(toy_app(seen), ["run"]).exit_code == 0
    assert seen[0][0] == Toy()                                  # every default is the model's


def test_a_value_the_model_rejects_names_the_flag():
    seen = []
    result = CliRunner().invoke(toy_app(seen), ["run", "--steps", "0"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith("--steps: Input should be greater than or equal to 1")
    bad_choice = CliRunner().invoke(toy_app(seen), ["run", "--mode", "c"])
    assert bad_choice.exit_code == 2 and not seen


def test_misuse_is_caught_when_the_command_is_declared():
    class WithDict(BaseModel):
        table: dict[str, int] = Field(default_factory=dict, description="no flag form")

    with pytest.raises(TypeError, match="table"):
        options_from(WithDict)
    with pytest.raises(TypeError, match="no field"):
        options_from(Toy, flags={"nmae": Flag("--n")})
    with pytest.raises(TypeError, match="no parameter 'options'"):
        options_from(Toy, exclude=["pairs"])(lambda toy: None)
    with pytest.raises(TypeError, match="already has"):
        options_from(Toy, exclude=["pairs"])(lambda options, steps=1: None)


class Scores(BaseModel):
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"], description="metrics, first is primary")
    pass_k: list[int] = Field(default_factory=lambda: [1], description="k values of pass@k")
    enabled: bool = Field(True, description="not a command-line setting")


def test_comma_separated_lists_and_a_subset_of_fields():
    seen = []
    app = typer.Typer(add_completion=False)

    @app.command()
    @options_from(Scores, only=["metrics", "pass_k"], flags={"metrics": comma_separated(), "pass_k": comma_separated("--pass-k", item=int)})
    def score(options: Scores):
        seen.append(options)

    params = {p.name: p for p in typer.main.get_command(app).params}
    assert set(params) == {"metrics", "pass_k"}
    assert params["metrics"].default == "exact_match" and params["pass_k"].default == "1"
    assert CliRunner().invoke(app, ["--metrics", "bleu, rouge_l", "--pass-k", "1,5"]).exit_code == 0
    assert CliRunner().invoke(app, []).exit_code == 0
    assert seen == [Scores(metrics=["bleu", "rouge_l"], pass_k=[1, 5]), Scores()]
    bad = CliRunner().invoke(app, ["--pass-k", "1,x"])
    assert isinstance(bad.exception, ConfigError) and "--pass-k: expected comma-separated int values" in str(bad.exception)


class Budget(BaseModel):
    tokens: Literal["auto"] | int = Field("auto", description="a word or a number")


def test_a_word_or_number_field_is_one_option_taking_either():
    seen = []
    app = typer.Typer(add_completion=False)

    @app.command()
    @options_from(Budget)
    def go(options: Budget):
        seen.append(options)

    [param] = typer.main.get_command(app).params
    assert (param.opts, param.default, param.metavar, param.help) == (["--tokens"], "auto", "INTEGER|auto",
                                                                        "a word or a number")
    assert CliRunner().invoke(app, []).exit_code == 0
    assert CliRunner().invoke(app, ["--tokens", "300"]).exit_code == 0
    assert CliRunner().invoke(app, ["--tokens", "auto"]).exit_code == 0
    assert seen == [Budget(), Budget(tokens=300), Budget(tokens="auto")] and seen[1].tokens == 300
    bad = CliRunner().invoke(app, ["--tokens", "lots"])
    assert isinstance(bad.exception, ConfigError) and str(bad.exception).startswith("--tokens: ")


# -- tunesmith serve ---------------------------------------------------------------------------------------

def _serve_command():
    from tunesmith.cli import _load_commands
    from tunesmith.cli.common import app

    _load_commands()
    return app, typer.main.get_command(app).commands["serve"]


def test_serve_help_lists_every_serve_option_with_its_description_and_default():
    from tunesmith.cli.serve import FLAGS
    from tunesmith.serve.options import ServeOptions

    app, command = _serve_command()
    params = {p.name: p for p in command.params}
    result = CliRunner().invoke(app, ["serve", "--help"], env=WIDE)
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for name, field in ServeOptions.model_fields.items():
        flag = FLAGS[name].names[0] if name in FLAGS else "--" + name.replace("_", "-")
        assert params[name].opts[0] == flag
        assert params[name].help == field.description
        assert field.description in text, name
        assert flag in text, name
        default = field.get_default(call_default_factory=True)
        if default not in (None, {}):
            assert params[name].default == default, name
            # A bool is a --flag/--no-flag pair; its default is shown as the flag in force.
            shown = (flag[2:] if default else "no-" + flag[2:]) if isinstance(default, bool) else default
            assert f"[default: {shown}]" in text, name
    # The spellings users know keep working.
    for flag in ("--model", "-m", "--adapter", "-a", "--served-model-name", "--api-key", "--adapter-dir", "--timeout",
                 "--traffic-log", "--max-tokens-limit", "--default-max-tokens", "--max-body-bytes", "--max-batch",
                 "--max-queue", "--dtype", "--host", "--port", "--print-vllm-command"):
        assert flag in text, flag


def test_serve_flags_reach_serve_options(tmp_path, monkeypatch):
    import tunesmith.serve.server as server

    captured = {}
    monkeypatch.setattr(server, "serve_forever", lambda options, **kw: captured.update(options=options, **kw))
    monkeypatch.setenv("TUNESMITH_API_KEY", "from-env")
    (tmp_path / "ad").mkdir()
    app, _ = _serve_command()
    result = CliRunner().invoke(app, ["serve", "-m", "my-base", "-a", f"x={tmp_path / 'ad'}", "--served-model-name", "base",
                                      "--adapter-dir", str(tmp_path), "--dtype", "bf16", "--max-batch", "3",
                                      "--max-queue", "9", "--max-tokens-limit", "64", "--default-max-tokens", "8",
                                      "--max-body-bytes", "1000", "--timeout", "2.5", "--max-n", "2",
                                      "--traffic-log", str(tmp_path / "t.jsonl"), "--port", "8123"])
    assert result.exit_code == 0, result.output
    from tunesmith.serve.options import ServeOptions

    assert captured["options"] == ServeOptions(
        model="my-base", adapters={"x": str(tmp_path / "ad")}, served_name="base", adapter_dir=str(tmp_path),
        api_key="from-env", dtype="bf16", max_batch=3, max_queue=9, max_tokens_limit=64, default_max_tokens=8,
        max_body_bytes=1000, request_timeout_s=2.5, max_n=2, traffic_log=str(tmp_path / "t.jsonl"))
    assert captured["port"] == 8123 and captured["host"] == "127.0.0.1"
