"""`tunesmith data ...`: list formats; validate, inspect, clean, convert and split training data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tunesmith.cli.common import app, err, live_line, out, print_table
from tunesmith.cli.options import options_from
from tunesmith.data.from_traffic import TrafficOptions

data_app = typer.Typer(no_args_is_help=True, help="Validate, inspect, clean, convert and split training data.")
app.add_typer(data_app, name="data")

FileArg = typer.Argument(..., help="data file (.jsonl .json .parquet .csv), a saved datasets folder, or a folder of .txt/.md")
FormatOpt = typer.Option("auto", "--format", help="force an input format instead of detecting it (`tunesmith data formats` lists them)")
ModelOpt = typer.Option("default", "--model", help="model whose tokenizer and chat template measure lengths")
TemplateOpt = typer.Option("auto", "--template", help="chat template: auto (the model's own), chatml, llama3 or alpaca")


def _plain(text: str, console=out) -> None:
    console.print(text, markup=False, highlight=False)



def _tokenizer(model: str, template: str):
    from tunesmith.models import load_tokenizer

    return load_tokenizer(model, template)


def _context(model: str, tokenizer) -> int | None:
    """The model's context (what `data.max_len: auto` is capped by)."""
    from tunesmith.data.lengths import context_of_folder
    from tunesmith.models import resolve_base

    return context_of_folder(resolve_base(model).path, tokenizer)


def _max_len_option(value: str | None, flag: str = "--max-len") -> int | str | None:
    """--max-len: a number of tokens or 'auto' (data.max_len's own values)."""
    from tunesmith.config import auto_or_int
    from tunesmith.errors import DataError

    if value is None:
        return None
    try:
        return auto_or_int(value, above=0)
    except ValueError:
        raise DataError(f"{flag} must be a positive number of tokens, got {value}",
                        hint="or 'auto': what data.max_len: auto can become (the model's context)") from None


@data_app.command("formats")
def data_formats(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the input formats, in the order auto-detection tries them, with the keys that identify each."""
    from tunesmith.data.formats import FORMATS

    listed = sorted(FORMATS.values(), key=lambda f: f.detect_rank)
    if as_json:
        out.print_json(json.dumps([{"name": f.name, "keys": list(f.keys), "description": _first_line(f)} for f in listed]))
        return
    print_table("input formats (auto-detection tries them in this order)", ["format", "identified by", "record"],
                [(f.name, "+".join(f.keys), _first_line(f)) for f in listed])


def _first_line(fmt) -> str:
    return (type(fmt).__doc__ or "").strip().splitlines()[0] if type(fmt).__doc__ else ""


@data_app.command("validate")
def data_validate(file: Path = FileArg, fmt: str = FormatOpt,
                  max_errors: int = typer.Option(0, help="stop after N errors (0 = report all)"),
                  max_len: str | None = typer.Option(None, "--max-len", metavar="INTEGER|auto",
                                                     help="also check that every prompt fits in this many tokens "
                                                     "(data.max_len), with --model's tokenizer; 'auto': in the "
                                                     "model's context, the most data.max_len: auto can become"),
                  model: str = ModelOpt, template: str = TemplateOpt,
                  as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Check every record; print FILE:LINE: field: problem. Exit 1 on errors (warnings do not fail)."""
    from tunesmith.data.load import read_samples

    limit = _max_len_option(max_len)
    tokenizer = _tokenizer(model, template) if limit else None
    if limit == "auto":
        limit = _context(model, tokenizer)
    result = read_samples(file, fmt, max_errors=max_errors, keep=False, tokenizer=tokenizer, max_len=limit)
    if as_json:
        out.print_json(json.dumps({"format": result.format, "records": result.records, "valid": result.valid,
                                   "errors": [str(e) for e in result.errors],
                                   "warnings": [str(w) for w in result.warnings]}))
    else:
        for problem in result.problems:
            _plain(str(problem), err if problem.severity == "error" else out)
        _plain(f"{file}: format {result.format or 'unknown'}, {result.records} records, {result.valid} valid, "
               f"{len(result.errors)} errors, {len(result.warnings)} warnings")
    if result.errors:
        raise typer.Exit(1)


@data_app.command("inspect")
def data_inspect(file: Path = FileArg, model: str = ModelOpt, template: str = TemplateOpt, fmt: str = FormatOpt,
                 max_len: str = typer.Option("auto", "--max-len", metavar="INTEGER|auto",
                                             help="length limit to count examples against (data.max_len); 'auto': "
                                                  "what a run's data.max_len: auto makes of this file"),
                 as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
                 plot: Path | None = typer.Option(None, "--plot", help="write a token-length histogram to this PNG")):
    """Counts, token-length percentiles, examples over max_len, duplicates, packing efficiency, format.
    Given a run config (.yaml), the mix its data.train draws: each source's examples and share."""
    from tunesmith.data.inspection import inspect_file, plot_lengths

    if file.suffix.lower() in (".yaml", ".yml"):
        _inspect_mix(file, as_json)
        return

    limit = _max_len_option(max_len)
    tokenizer = _tokenizer(model, template)
    context = _context(model, tokenizer) if limit == "auto" else None
    result = inspect_file(file, tokenizer, max_len=limit, context=context, fmt=fmt)
    if plot is not None and result.lengths:
        plot_lengths(result, plot)
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
    else:
        rows = [("format", result.format or "unknown"), ("records", result.records), ("valid", result.valid),
                ("errors", result.errors), ("kinds", ", ".join(f"{k} {v}" for k, v in result.kinds.items()))]
        if result.roles:
            rows.append(("messages by role", ", ".join(f"{k} {v}" for k, v in result.roles.items())))
        if result.turns:
            rows.append(("turns per conversation", f"mean {result.turns['mean']}, max {result.turns['max']}"))
        if result.tokens:
            rows.append(("tokens", ", ".join(f"{k} {v}" for k, v in result.tokens.items())))
            name = f"auto = {result.max_len}" if result.max_len_setting == "auto" else str(result.max_len)
            rows.append((f"over max_len {name}", result.over_max_len))
            p = result.packing
            rows.append(("packing", f"{p['examples']} examples in {p['rows']} rows of {result.max_len}: "
                                    f"efficiency {p['efficiency']:.1%}"))
        rows += [("exact duplicates", result.exact_duplicates), ("near duplicates", result.near_duplicates)]
        print_table(str(file), ["", "value"], rows)
        for line in result.first_errors:
            _plain(line, err)
        if plot is not None and result.lengths:
            _plain(f"plot: {plot}")
    if result.errors:
        raise typer.Exit(1)


def _inspect_mix(config: Path, as_json: bool) -> None:
    from tunesmith.config import load_config
    from tunesmith.data.mix import describe_mix

    cfg = load_config(config)
    parts = describe_mix(cfg)
    total = sum(p.taken for p in parts)
    if as_json:
        out.print_json(json.dumps({"config": str(config), "examples": total, "mix": [p.as_dict(total) for p in parts]}))
        return
    print_table(f"{config}: data.train mix, {total} examples (seed {cfg.train.seed})",
                ["source", "available", "taken", "share", "asked"],
                [(p.path, p.available, p.taken, f"{p.taken / total:.1%}" if total else "-",
                  (f"weight {p.weight:g}" if p.weight is not None else f"count {p.count}" if p.count is not None else "all")
                  + ("; answers by the base model, made when training starts" if p.answers == "base" else ""))
                 for p in parts])


@data_app.command("clean")
def data_clean(file: Path = FileArg,
               output: Path = typer.Option(..., "-o", "--output", help="cleaned data (.jsonl, .json or .parquet)"),
               report: Path | None = typer.Option(None, "--report", help="report JSON (default: OUTPUT stem + .report.json)"),
               fmt: str = FormatOpt,
               normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Unicode (NFC) and whitespace clean-up"),
               dedup: bool = typer.Option(True, "--dedup/--no-dedup", help="remove exact duplicates (after folding case and spaces)"),
               near_dedup: bool = typer.Option(True, "--near-dedup/--no-near-dedup", help="remove near-duplicates (MinHash LSH)"),
               threshold: float = typer.Option(0.8, help="near-duplicate Jaccard threshold"),
               ngram: int = typer.Option(5, help="word n-gram size of the near-duplicate shingles"),
               num_perm: int = typer.Option(128, help="MinHash permutations"),
               min_tokens: int = typer.Option(0, help="drop examples shorter than this many tokens (0: off)"),
               max_tokens: int | None = typer.Option(None, help="drop examples longer than this many tokens"),
               model: str = ModelOpt, template: str = TemplateOpt,
               as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
               quiet: bool = typer.Option(False, help="no progress display")):
    """Normalise, drop empty / too short / too long / duplicate examples; print and write a report."""
    from tunesmith.data.clean import CleanOptions, clean_file, default_report_path
    from tunesmith.data.dedup import NearDupParams
    from tunesmith.errors import DataError
    from tunesmith.io_utils import write_json

    if not 0 < threshold <= 1:
        raise DataError(f"--threshold must be in (0, 1], got {threshold}")
    options = CleanOptions(normalize=normalize, exact_dedup=dedup, near_dedup=near_dedup,
                           near=NearDupParams(ngram=ngram, threshold=threshold, num_perm=num_perm),
                           min_tokens=min_tokens, max_tokens=max_tokens, fmt=fmt)
    tokenizer = _tokenizer(model, template) if options.needs_tokenizer else None
    with live_line(quiet, "reading", lambda read, kept: f"{read:,} records read, {kept:,} kept") as tick:
        result = clean_file(file, output, options, tokenizer, on_batch=tick)
    report_path = report or default_report_path(output)
    write_json(report_path, result.as_dict())
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
        return
    rows = [(reason, n, "; ".join(e["source"] + (f" (dup of {e['duplicate_of']})" if "duplicate_of" in e else "")
                                  for e in result.examples.get(reason, [])))
            for reason, n in result.removed.items() if n]
    print_table(f"{file}: {result.records} records -> {result.kept} kept, {result.total_removed} removed",
                ["removed because", "count", "examples"], rows)
    _plain(f"wrote {output} and {report_path} in {result.seconds:.1f}s")


@data_app.command("convert")
def data_convert(file: Path = FileArg,
                 output: Path = typer.Option(..., "-o", "--output", help="output file (.jsonl, .json or .parquet)"),
                 to: str = typer.Option(..., "--to", help="alpaca, chatml, sharegpt, prompt_completion, text, preference, openai_preference or kto "
                                              "(a pair becomes two kto records)"),
                 fmt: str = FormatOpt):
    """Rewrite every record in another format (all or nothing)."""
    from tunesmith.data.convert import convert_file

    summary = convert_file(file, output, to, fmt)
    _plain(f"wrote {summary['records']} records as {to} to {output} (read as {summary['from']})")


@data_app.command("split")
def data_split(file: Path = FileArg,
               val: float = typer.Option(..., "--val", help="fraction held out for validation, e.g. 0.1"),
               seed: int = typer.Option(0, "--seed", help="shuffle seed (the same draw as train.seed with data.val_split)"),
               out_dir: Path | None = typer.Option(None, "-o", "--out-dir", help="folder for STEM.train.jsonl / STEM.val.jsonl (default: next to FILE)"),
               fmt: str = FormatOpt):
    """Seeded train/validation split; records are written unchanged."""
    from tunesmith.data.split import split_file

    summary = split_file(file, val, seed, out_dir, fmt)
    _plain(f"{summary['n_train']} -> {summary['train']}\n{summary['n_val']} -> {summary['val']}")


@data_app.command("pairs")
def data_pairs(run: Path = typer.Argument(..., help="an eval report folder (or training run) with judge verdicts, "
                                                     "or its predictions.jsonl"),
               output: Path = typer.Option(..., "-o", "--output", help="preference pairs (.jsonl, .json or .parquet)"),
               as_json: bool = typer.Option(False, "--json", help="print the counts as JSON")):
    """Preference pairs (prompt/chosen/rejected) from an eval's answers and judge verdicts, kept only
    where the judge picked the same winner in both orders."""
    from tunesmith.data.pairs import build_pairs

    summary = build_pairs(run, output)
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
        return
    tuned, against = summary.systems
    rows = [(f"kept: {name} answer chosen", n) for name, n in summary.chosen_by_system.items()]
    rows += [(f"dropped: {reason.replace('_', ' ')}", n) for reason, n in summary.dropped.items() if n]
    print_table(f"{summary.predictions}: {summary.judged} examples judged ({tuned} vs {against}"
                + (f", judge {summary.judge}" if summary.judge else "") + f") -> {summary.kept} pairs",
                ["", "count"], rows)
    _plain(f"wrote {summary.kept} pairs to {output}")


@data_app.command("from-traffic")
@options_from(TrafficOptions, into="opts")
def data_from_traffic(log: Path = typer.Argument(..., help="the server's traffic log (tunesmith serve --traffic-log)"),
                      output: Path = typer.Option(..., "-o", "--output", help="training data out (.jsonl, .json or .parquet); "
                                                  "the held-out part goes to STEM.test.jsonl"),
                      as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
                      opts: TrafficOptions | None = None):
    """Served traffic -> dataset: filter by model / adapter / tag / time, drop cut-off answers, strip a
    shared system prompt, dedup, hold out a test split, optionally relabel with a teacher."""
    from tunesmith.data.from_traffic import harvest

    result = harvest(log, output, opts)
    r = result.report
    if as_json:
        out.print_json(json.dumps(r))
        return
    rows = [(f"dropped: {why}", n) for why, n in r["dropped"].items()]
    rows += [("kept", r["kept"]), ("train", r["train"]), ("test", r["test"])]
    if r["stripped_system_prompt"]:
        rows.append(("stripped system prompt", r["stripped_system_prompt"][:60]))
    if "teacher" in r:
        t = r["teacher"]
        rows.append(("relabelled by", f"{t['name']}: {t['requests']} asked, {t['cached']} cached, "
                                      f"{t['prompt_tokens']}+{t['completion_tokens']} tokens"))
    print_table(f"{log}: {r['records']} records", ["", "count"], rows)
    _plain(f"wrote {result.train}" + (f" and {result.test}" if result.test else ""))


@data_app.command("symbolize")
def data_symbolize(file: Path = FileArg,
                   output: Path = typer.Option(..., "-o", "--output", help="symbol-tuning prompts out (.jsonl, .json or .parquet)"),
                   n: int = typer.Option(1000, "--n", min=1, help="prompts to write"),
                   k: int = typer.Option(4, "--k", min=2, help="in-context examples per prompt"),
                   seed: int = typer.Option(0, "--seed", help="seed of the draws and symbols"),
                   fmt: str = FormatOpt):
    """Symbol tuning (Wei et al. 2023): classification examples -> few-shot prompts whose labels are
    replaced by arbitrary symbols, so the model must learn the mapping in context."""
    from tunesmith.data.symbolize import symbolize_file

    summary = symbolize_file(file, output, n=n, k=k, seed=seed, fmt=fmt)
    _plain(f"{file}: {summary['examples']} examples, {summary['labels']} labels -> {summary['written']} prompts in {output}")
