"""`tunesmith config show|init`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import SetOpt, app, out
from tunesmith.errors import UserError

config_app = typer.Typer(no_args_is_help=True, help="Show, check and create run configs.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: Path = typer.Argument(..., help="run config YAML"), overrides: list[str] | None = SetOpt):
    """Print the resolved config (defaults filled in, overrides applied)."""
    from tunesmith.config import dump_yaml, load_config

    typer.echo(dump_yaml(load_config(config, overrides)), nl=False)


@config_app.command("init")
def config_init(path: Path | None = typer.Option(None, "-o", "--out", help="write here instead of stdout"),
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
