"""`tunesmith eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli.common import app, out, print_report
from tunesmith.errors import UserError


@app.command("eval")
def evaluate(model: str = typer.Option("default", "--model", help="base model (see model.base)"),
             adapter: Optional[Path] = typer.Option(None, "--adapter", help="adapter folder to evaluate"),
             data: Path = typer.Option(..., "--data", help="held-out data file"),
             out_dir: Path = typer.Option(..., "-o", "--out", help="report folder"),
             metrics: str = typer.Option("exact_match", help="comma-separated metrics"),
             baselines: str = typer.Option("zero-shot,few-shot", help="comma-separated: zero-shot, few-shot, or ''"),
             train_data: Optional[Path] = typer.Option(None, "--train-data", help="pool for few-shot examples"),
             few_shot_k: int = typer.Option(3, help="examples in the few-shot prompt"),
             max_new_tokens: int = typer.Option(128, help="generation budget"),
             max_examples: int = typer.Option(0, help="score at most N examples (0 = all)"),
             quiet: bool = typer.Option(False, help="no progress bars")):
    """Score a model (and its adapter) against base zero-shot / few-shot baselines."""
    from tunesmith.config import EvalConfig
    from tunesmith.data.load import load_samples
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.models import load_model, load_tokenizer, resolve_base

    cfg = EvalConfig(metrics=[m for m in metrics.split(",") if m], baselines=[b for b in baselines.split(",") if b],
                     few_shot_k=few_shot_k, max_new_tokens=max_new_tokens, max_examples=max_examples)
    if "few-shot" in cfg.baselines and train_data is None:
        raise UserError("the few-shot baseline needs --train-data to draw examples from",
                        hint="pass --train-data FILE or --baselines zero-shot")
    samples = load_samples(data)
    pool = load_samples(train_data) if train_data else []
    resolved = resolve_base(model)
    tokenizer = load_tokenizer(resolved)
    base = load_model(resolved)
    tuned = None
    if adapter is not None:
        from tunesmith.methods import load_trained

        tuned = load_trained(base, adapter)  # PEFT layout or one of ours (bottleneck)
    elif not cfg.baselines:
        tuned = base
    if tuned is None:
        systems = build_systems(None, cfg.baselines, base_model=base, few_shot_k=few_shot_k)
    else:
        systems = build_systems(tuned, cfg.baselines, few_shot_k=few_shot_k)
    from tunesmith.train.trainer import resolve_precision

    result = run_eval(systems, tokenizer, samples, cfg, out_dir, train_pool=pool, precision=resolve_precision("auto"),
                      show_progress=not quiet, title=f"evaluation of {adapter or model}")
    print_report(result.report)
    out.print(f"report: {out_dir / 'report.md'}")
