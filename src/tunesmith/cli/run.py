"""`tunesmith quickstart` and `tunesmith train`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import SetOpt, app, out, print_report


@app.command()
def quickstart(out_dir: Path = typer.Option(Path("runs/quickstart"), "--out", help="run folder"),
               overrides: list[str] | None = SetOpt,
               quiet: bool = typer.Option(False, help="no progress bars")):
    """Fine-tune the embedded default model on a shipped task and print a before/after table."""
    from tunesmith.cli.console import ConsoleDisplay
    from tunesmith.events import Events
    from tunesmith.quickstart import run_quickstart

    with ConsoleDisplay(out, progress=not quiet) as display:
        result = run_quickstart(out_dir, overrides, events=Events(display))
    if result.eval_report:
        print_report(result.eval_report)
    out.print(f"run folder: {result.run_dir}")


@app.command()
def train(config: Path = typer.Argument(..., help="run config YAML"),
          overrides: list[str] | None = SetOpt,
          resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in output.dir"),
          quiet: bool = typer.Option(False, help="no progress bars")):
    """Train (then evaluate and optionally merge) as the config says."""
    from tunesmith.cli.console import ConsoleDisplay
    from tunesmith.config import load_config
    from tunesmith.events import Events
    from tunesmith.pipeline import run

    cfg = load_config(config, overrides)
    with ConsoleDisplay(out, progress=not quiet) as display:
        result = run(cfg, resume=resume, events=Events(display))
    if result.eval_report:
        print_report(result.eval_report)
