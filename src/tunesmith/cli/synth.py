"""`tunesmith synth MODE INPUT -o OUT`: training data from a teacher, curated, with a yield report.

Every setting is a field of `SynthOptions` (synth/options.py): its flag, default and help come from there.
"""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from tunesmith.cli.common import app, live_line, out, print_table
from tunesmith.cli.options import options_from
from tunesmith.synth.modes import MODES
from tunesmith.synth.options import SynthOptions

_MODE_HELP = "; ".join(f"{name}: {cls.help}" for name, cls in MODES.items())
# An Enum, so --help lists the modes and typer rejects an unknown one with the choices.
ModeChoice = enum.Enum("ModeChoice", {name: name for name in MODES}, type=str)


def _teacher_cell(usage: dict | None) -> str:
    if not usage:
        return "-"
    text = f"{usage['requests']} asked, {usage['cached']} cached, {usage['prompt_tokens']}+{usage['completion_tokens']} tok"
    return text + (f", {usage['failed']} failed" if usage["failed"] else "") + (f", {usage['retries']} retries" if usage["retries"] else "")


def print_yield(report: dict) -> None:
    rows = []
    for s in report["stages"]:
        why = "; ".join(f"{reason} {n}" for reason, n in s["dropped"].items()) or "-"
        rows.append((s["stage"], s["in"], s["out"], why, _teacher_cell(s.get("teacher"))))
    of = f" of {report['target']}" if report["target"] else ""
    print_table(f"synth {report['mode']}: {report['kept']}{of} examples kept",
                ["stage", "in", "out", "dropped (why)", "teacher"], rows)
    t = report["teacher_usage"]
    out.print(f"teacher: {t['requests']} requests ({t['cached']} from the cache), {t['prompt_tokens']} prompt + "
              f"{t['completion_tokens']} completion tokens, cost {t['cost']:g}", highlight=False)
    skipped = report.get("documents", {}).get("skipped") or {}
    for file, why in skipped.items():
        out.print(f"skipped document {file}: {why}", markup=False, highlight=False)



@app.command("synth")
@options_from(SynthOptions, into="opts")
def synth_command(mode: ModeChoice = typer.Argument(..., help=f"what to synthesize: {_MODE_HELP}"),
                  source: Path = typer.Argument(..., help="seeds / prompts (a data file) or documents (from-docs)"),
                  output: Path = typer.Option(..., "-o", "--output", help="training data out (.jsonl, .json or .parquet); "
                                              "its yield report goes next to it as STEM.report.json"),
                  as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
                  quiet: bool = typer.Option(False, help="no progress line"),
                  opts: SynthOptions | None = None):
    """Synthesize, relabel or evolve training data with a teacher model and curate it (format, duplicates,
    novelty, held-out decontamination, checks, an LLM judge). Interrupted runs resume from the request cache."""
    import json

    from tunesmith.synth.run import synthesize

    with live_line(quiet, "asking the teacher", lambda requests, kept: f"{requests} requests, {kept} examples kept") as tick:
        result = synthesize(mode.value, source, output, opts, progress=tick)
    if as_json:
        out.print_json(json.dumps(result.report))
        return
    print_yield(result.report)
    for warning in result.report.get("warnings", []):
        out.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
    out.print(f"wrote {result.output} and {result.report_path}", markup=False, highlight=False)
