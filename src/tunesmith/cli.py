"""The command line: one thin function per verb over the library.

A `UserError` anywhere below prints one clear message and exits non-zero; `--debug` (anywhere on
the command line) shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune LLMs end to end: data, train, evaluate, merge, export, serve.")
config_app = typer.Typer(no_args_is_help=True, help="Show, check and create run configs.")
data_app = typer.Typer(no_args_is_help=True, help="Validate and inspect training data.")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)

SetOpt = typer.Option(None, "--set", help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")


def _print_table(title: str, header: list[str], rows: list[tuple]) -> None:
    table = Table(title=title)
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*[str(c) for c in row])
    out.print(table)


def _print_report(report: dict) -> None:
    metrics = report["metrics"]
    rows = [(name, *(f"{entry[m]:.3f}" for m in metrics)) for name, entry in report["systems"].items()]
    _print_table(f"{report['title']} (n={report['n_examples']})", ["system", *metrics], rows)
    if report.get("verdict"):
        out.print(f"[bold]{report['verdict']}[/bold]")


# --- run verbs ---------------------------------------------------------------------------------

@app.command()
def quickstart(out_dir: Path = typer.Option(Path("runs/quickstart"), "--out", help="run folder"),
               overrides: Optional[List[str]] = SetOpt,
               quiet: bool = typer.Option(False, help="no progress bars")):
    """Fine-tune the embedded default model on a shipped task and print a before/after table."""
    from tunesmith.quickstart import run_quickstart

    result = run_quickstart(out_dir, overrides, show_progress=not quiet, log=out.print)
    if result.eval_report:
        _print_report(result.eval_report)
    out.print(f"run folder: {result.run_dir}")


@app.command()
def train(config: Path = typer.Argument(..., help="run config YAML"),
          overrides: Optional[List[str]] = SetOpt,
          resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in output.dir"),
          quiet: bool = typer.Option(False, help="no progress bars")):
    """Train (then evaluate and optionally merge) as the config says."""
    from tunesmith.config import load_config
    from tunesmith.pipeline import run

    cfg = load_config(config, overrides)
    result = run(cfg, resume=resume, show_progress=not quiet, log=out.print)
    if result.eval_report:
        _print_report(result.eval_report)


@app.command("eval")
def evaluate(model: str = typer.Option("default", "--model", help="base model (see model.base)"),
             adapter: Optional[Path] = typer.Option(None, "--adapter", help="adapter folder to evaluate"),
             data: Path = typer.Option(..., "--data", help="held-out data file"),
             out_dir: Path = typer.Option(..., "-o", "--out", help="report folder"),
             metrics: str = typer.Option("exact_match", help="comma-separated metrics"),
             baselines: str = typer.Option("zero-shot,few-shot", help="comma-separated: zero-shot, few-shot, or ''"),
             train_data: Optional[Path] = typer.Option(None, "--train-data", help="pool for few-shot examples"),
             few_shot_k: int = typer.Option(3, help="examples in the few-shot prompt"),
             max_new_tokens: int = typer.Option(128, help="generation budget"),
             max_examples: int = typer.Option(0, help="score at most N examples (0 = all)"),
             quiet: bool = typer.Option(False, help="no progress bars")):
    """Score a model (and its adapter) against base zero-shot / few-shot baselines."""
    from tunesmith.config import EvalConfig
    from tunesmith.data.load import load_samples
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.models import load_model, load_tokenizer, resolve_base

    cfg = EvalConfig(metrics=[m for m in metrics.split(",") if m], baselines=[b for b in baselines.split(",") if b],
                     few_shot_k=few_shot_k, max_new_tokens=max_new_tokens, max_examples=max_examples)
    if "few-shot" in cfg.baselines and train_data is None:
        raise UserError("the few-shot baseline needs --train-data to draw examples from",
                        hint="pass --train-data FILE or --baselines zero-shot")
    samples = load_samples(data)
    pool = load_samples(train_data) if train_data else []
    resolved = resolve_base(model)
    tokenizer = load_tokenizer(resolved)
    base = load_model(resolved)
    tuned = None
    if adapter is not None:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(adapter))
    elif not cfg.baselines:
        tuned = base
    if tuned is None:
        systems = build_systems(None, cfg.baselines, base_model=base, few_shot_k=few_shot_k)
    else:
        systems = build_systems(tuned, cfg.baselines, few_shot_k=few_shot_k)
    from tunesmith.train.trainer import resolve_precision

    result = run_eval(systems, tokenizer, samples, cfg, out_dir, train_pool=pool, precision=resolve_precision("auto"),
                      show_progress=not quiet, title=f"evaluation of {adapter or model}")
    _print_report(result.report)
    out.print(f"report: {out_dir / 'report.md'}")


@app.command()
def merge(adapter: Path = typer.Option(..., "--adapter", help="adapter folder (PEFT layout)"),
          out_dir: Path = typer.Option(..., "-o", "--out", help="merged model folder"),
          base: Optional[str] = typer.Option(None, "--base", help="base model; default: the one the adapter names"),
          dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16")):
    """Merge an adapter into its base model: a plain HF folder for transformers, llama.cpp, vLLM."""
    from tunesmith.export.merge import DTYPES, merge_adapter

    if dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{dtype}'", hint=f"use one of {', '.join(DTYPES)}")
    path = merge_adapter(adapter, out_dir, base=base, dtype=dtype)
    out.print(f"merged model written to {path}")


@app.command()
def methods():
    """List the fine-tuning methods."""
    from tunesmith.methods import METHODS

    rows = [(name, "yes" if m.mergeable else "no", m.summary) for name, m in METHODS.items()]
    _print_table("methods", ["name", "mergeable", "what it trains"], rows)


# --- config ------------------------------------------------------------------------------------

@config_app.command("show")
def config_show(config: Path = typer.Argument(..., help="run config YAML"), overrides: Optional[List[str]] = SetOpt):
    """Print the resolved config (defaults filled in, overrides applied)."""
    from tunesmith.config import dump_yaml, load_config

    typer.echo(dump_yaml(load_config(config, overrides)), nl=False)


@config_app.command("init")
def config_init(path: Optional[Path] = typer.Option(None, "-o", "--out", help="write here instead of stdout"),
                force: bool = typer.Option(False, help="overwrite an existing file")):
    """Write a commented starter config with every key at its default."""
    from tunesmith.config import starter_yaml
    from tunesmith.io_utils import atomic_file

    text = starter_yaml()
    if path is None:
        typer.echo(text)
        return
    if path.exists() and not force:
        raise UserError(f"{path} already exists", hint="pass --force to overwrite")
    with atomic_file(path) as fh:
        fh.write(text)
    out.print(f"wrote {path}")


# --- data --------------------------------------------------------------------------------------

@data_app.command("validate")
def data_validate(file: Path = typer.Argument(..., help="data file or folder"),
                  fmt: str = typer.Option("auto", "--format", help="force a format instead of detecting it"),
                  max_errors: int = typer.Option(0, help="stop after N errors (0 = report all)"),
                  as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Check every record; print FILE:LINE: field: problem. Exit 1 on errors."""
    from tunesmith.data.load import read_samples

    result = read_samples(file, fmt, max_errors=max_errors)
    if as_json:
        out.print_json(json.dumps({"format": result.format, "records": result.records, "valid": len(result.samples),
                                   "errors": [str(e) for e in result.errors],
                                   "warnings": [str(w) for w in result.warnings]}))
    else:
        for problem in result.problems:
            (err if problem.severity == "error" else out).print(f"{problem.severity}: {problem}", markup=False, highlight=False)
        out.print(f"{file}: format {result.format or 'unknown'}, {result.records} records, "
                  f"{len(result.samples)} valid, {len(result.errors)} errors, {len(result.warnings)} warnings",
                  markup=False, highlight=False)
    if result.errors:
        raise typer.Exit(1)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors")):
    """tunesmith: the whole life of a fine-tune."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="tunesmith", standalone_mode=True)
    except UserError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/bold red] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"[dim]hint:[/dim] {exc.hint}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
