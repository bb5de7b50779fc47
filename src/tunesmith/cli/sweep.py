"""`tunesmith sweep`: a budgeted search over lr / rank / epochs (the library is train/sweep.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import SetOpt, app, out, print_table
from tunesmith.cli.options import Flag, options_from
from tunesmith.train.sweep import SweepOptions


@app.command()
@options_from(SweepOptions, flags={"grid": Flag("--grid", metavar="KEY=V1,V2,..."), "out": Flag("--out", "-o")})
def sweep(config: Path = typer.Argument(..., help="run config YAML (the search starts from it)"),
          overrides: list[str] | None = SetOpt,
          quiet: bool = typer.Option(False, help="no progress bars"),
          options: SweepOptions | None = None):
    """Search learning rate, LoRA rank and epochs on a validation split; write sweep.md and best.yaml."""
    from tunesmith.cli.console import ConsoleDisplay
    from tunesmith.config import load_config
    from tunesmith.events import Events
    from tunesmith.train.sweep import Sweep, table_rows

    cfg = load_config(config, overrides)
    with ConsoleDisplay(out, progress=not quiet) as display:
        search = Sweep(cfg, options, Events(display))   # every grid value is checked here, before training
        result = search.run()
    header, rows = table_rows(result, search.columns)
    print_table(f"sweep of {config} ({len(result.trials)} trials, best first)", header, rows)
    if result.stopped:
        out.print(f"stopped early: {result.stopped}")
    out.print(f"best: trial {result.best.index}; run it with: tunesmith train {result.out_dir / 'best.yaml'}")
