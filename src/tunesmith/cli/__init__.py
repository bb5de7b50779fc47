"""The command line: one thin module per verb group over the library.

Each module in this package defines its commands on the shared `app` (or a sub-app it adds);
`main` imports them all. A `UserError` anywhere below, or an OS error on a path (permission denied,
not a folder ...), prints one clear message and exits non-zero; `--debug` (anywhere on the command
line) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

from rich.markup import escape

from tunesmith.allocator import keep_freed_memory
from tunesmith.cli.common import app, err
from tunesmith.errors import UserError
from tunesmith.quiet import quiet_cli

# Verb groups, in the order `tunesmith --help` lists them. A new group is one module and one name here.
COMMAND_MODULES = ["run", "sweep", "decide", "evaluate", "export", "serve", "jobs", "methods", "objectives", "spectrum", "config", "data", "synth"]


def _load_commands() -> None:
    # Every listed module must import: one that fails is a bug to see, not a verb to drop silently.
    for name in COMMAND_MODULES:
        importlib.import_module(f"tunesmith.cli.{name}")


# OS errors that, in a CLI run, come from a path the user gave (output.dir, --out, a data file in a
# folder they cannot read ...): one line naming the path, like a UserError. Anything else keeps its traceback.
PATH_ERRORS = (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Take `--debug` out of argv wherever it is (before a `--`), so every verb accepts it."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return rest, len(rest) != len(argv)


def path_error_line(exc: OSError) -> str:
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {exc.strerror or exc.__class__.__name__}"


def _fail(message: str, hint: str | None, exit_code: int) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    if hint:
        err.print(f"[dim]hint:[/dim] {escape(hint)}", highlight=False)
    sys.exit(exit_code)


def main(argv: list[str] | None = None) -> None:
    argv, debug = split_debug(list(sys.argv[1:] if argv is None else argv))
    quiet_cli()
    keep_freed_memory()
    _load_commands()
    try:
        app(args=argv, prog_name="tunesmith", standalone_mode=True)
    except UserError as exc:
        if debug:
            raise
        _fail(exc.message, exc.hint, exc.exit_code)
    except PATH_ERRORS as exc:
        if debug or exc.filename is None:  # no path to blame: a bug, keep the traceback
            raise
        _fail(path_error_line(exc), "check the path and its permissions (--debug shows the traceback)", 2)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as exc:
        # typer turns a Ctrl-C inside a command into a silent exit 130; say what happened.
        if exc.code == 130:
            _interrupted()
        raise


def _interrupted() -> None:
    err.print("interrupted")
    sys.exit(130)
