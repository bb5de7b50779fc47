"""Shared pieces of the CLI: the root app, consoles, table printing, common options."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune LLMs end to end: data, train, evaluate, merge, export, serve.")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SetOpt = typer.Option(None, "--set", help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors (anywhere on the command line)")):
    # `main` takes --debug out of argv wherever it stands (so `tunesmith train X --debug` works); the
    # option stays here so --help lists it.
    """tunesmith: the whole life of a fine-tune."""


def print_table(title: str, header: list[str], rows: list[tuple]) -> None:
    table = Table(title=title)
    # The first column names the row (a job id, a system): never cut, however narrow the output, since
    # users copy it into the next command; the other columns wrap instead.
    first = max([len(header[0])] + [len(str(r[0])) for r in rows])
    for i, h in enumerate(header):
        table.add_column(h, no_wrap=i == 0, min_width=first if i == 0 else None, overflow="fold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    out.print(table)


def print_report(report: dict) -> None:
    metrics = report["metrics"]
    # A section may score only some systems (pass@k needs code tasks, perplexity chats): "-" for the rest.
    rows = [(name, *(f"{entry[m]:.3f}" if entry.get(m) is not None else "-" for m in metrics))
            for name, entry in report["systems"].items()]
    print_table(f"{report['title']} (n={report['n_examples']})", ["system", *metrics], rows)
    if report.get("verdict"):
        out.print(f"[bold]{report['verdict']}[/bold]")


@contextlib.contextmanager
def live_line(quiet: bool, start: str, describe: Callable[[int, int], str]):
    """A transient spinner line on stderr (stdout stays clean for --json): yields `tick(a, b)`, which shows
    `describe(a, b)`, or None when quiet or stderr is not a terminal."""
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(start)
        yield lambda a, b: bar.update(task, description=describe(a, b))
