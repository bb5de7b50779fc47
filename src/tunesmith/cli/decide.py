"""`tunesmith decide`: prompting, retrieval and a quick fine-tune compared on the user's data.

Every setting is a field of `DecideOptions` (decide/options.py): its flag, default and help come
from there.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import app, out
from tunesmith.cli.options import comma_separated, options_from
from tunesmith.decide.options import DecideOptions

_FLAGS = {
    "metrics": comma_separated(help="e.g. exact_match or json_exact,json_valid"),
    "price_per_1k_tokens": comma_separated(item=float, metavar="PROMPT[,COMPLETION]"),
    "teacher_price_per_1k_tokens": comma_separated(item=float, metavar="PROMPT[,COMPLETION]"),
}


@app.command("decide")
@options_from(DecideOptions, into="opts", flags=_FLAGS)
def decide_command(data: Path = typer.Option(..., "--data", help="your examples (.jsonl chats or instruction/response pairs)"),
                   out_dir: Path = typer.Option(Path("runs/decide"), "-o", "--out", help="report folder"),
                   quiet: bool = typer.Option(False, help="no progress bars"),
                   opts: DecideOptions | None = None):
    """Should this task be fine-tuned? Zero-shot, few-shot, retrieval few-shot, RAG and a quick LoRA
    fine-tune scored on your data: quality with intervals, latency, cost, and a recommendation."""
    from tunesmith.cli.console import ConsoleDisplay
    from tunesmith.decide import decide
    from tunesmith.events import Events

    with ConsoleDisplay(out, progress=not quiet) as display:
        report = decide(data, out_dir, opts, events=Events(display))
    rec = report["recommendation"]
    out.print(f"[bold]recommendation: {rec['decision']}[/bold] - {rec['reason']}")
    out.print(f"report: {out_dir / 'report.md'}")
