"""`tunesmith data ...`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tunesmith.cli.common import app, err, out

data_app = typer.Typer(no_args_is_help=True, help="Validate and inspect training data.")
app.add_typer(data_app, name="data")


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
