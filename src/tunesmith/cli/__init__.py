"""The command line: one thin module per verb group over the library.

Each module in this package defines its commands on the shared `app` (or a sub-app it adds);
`main` imports them all. A `UserError` anywhere below prints one clear message and exits
non-zero; `--debug` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

from tunesmith.cli.common import app, err
from tunesmith.errors import UserError

# Verb groups, in the order `tunesmith --help` lists them. A new group is one module and one name here.
COMMAND_MODULES = ["run", "evaluate", "export", "serve", "methods", "spectrum", "config", "data"]


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"tunesmith.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tunesmith.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _load_commands()
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
