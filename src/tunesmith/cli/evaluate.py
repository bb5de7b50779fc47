"""`tunesmith eval`.

Every option that sets an `eval:` key is generated from `EvalConfig` (cli/options.py): its
default and help text are the field's, so the CLI and the YAML cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import app, out, print_report
from tunesmith.cli.options import comma_separated, options_from
from tunesmith.config import EvalConfig
from tunesmith.errors import UserError
from tunesmith.eval.baselines import baseline_names, get_baseline
from tunesmith.eval.metrics import DESCRIPTIONS

# Keys a standalone eval has no use for: it always runs, reads --data, and has no training log.
_NOT_FLAGS = {"enabled", "data", "overfit_gap"}
# List keys take one comma-separated value, the form these flags have always had.
_FLAGS = {
    "metrics": comma_separated(help=f"the first is primary; one of {', '.join(DESCRIPTIONS)} (see docs/eval.md)"),
    "baselines": comma_separated(help=f"any of {', '.join(baseline_names())}, or '' for none (see docs/eval.md)"),
    "pass_k": comma_separated(item=int),
    "lm_eval_tasks": comma_separated(),
}


def _adapter_given_as_model(model: str, adapter: Path | None) -> tuple[str, Path | None]:
    """`--model ADAPTER_FOLDER` alone means that adapter on the base it records (as peft's AutoPeftModel reads it)."""
    folder = Path(model).expanduser()
    if adapter is not None or not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return model, adapter
    from tunesmith.export.merge import adapter_base

    base = adapter_base(folder)
    if not base:
        raise UserError(f"--model {model}: an adapter folder that does not record its base model",
                        hint=f"pass --adapter {model} and the base model as --model")
    return base, folder


@app.command("eval")
@options_from(EvalConfig, into="cfg", exclude=_NOT_FLAGS, flags=_FLAGS)
def evaluate(model: str = typer.Option("default", "--model", help="base model (see model.base), or an adapter folder "
                                                                  "alone: that adapter on the base it records"),
             adapter: Path | None = typer.Option(None, "--adapter", help="adapter folder to evaluate"),
             data: Path | None = typer.Option(None, "--data", help="held-out data file (chats for generation "
                                                 "metrics, preference pairs for preference accuracy too, raw text "
                                                 "for perplexity)"),
             out_dir: Path = typer.Option(..., "-o", "--out", help="report folder"),
             train_data: Path | None = typer.Option(None, "--train-data", help="pool for few-shot examples"),
             quiet: bool = typer.Option(False, help="no progress bars"),
             cfg: EvalConfig | None = None):
    """Score a model (and its adapter) against base zero-shot / few-shot baselines."""
    if data is None:
        cfg = cfg.model_copy(update={"metrics": []})  # without chats there is nothing to generate
    if not cfg.pass_k:
        cfg = cfg.model_copy(update={"pass_k": [1]})
    if data is None and cfg.code_tasks is None:
        raise UserError("nothing to evaluate", hint="pass --data FILE (held-out examples) and/or --code-tasks FILE")
    drawing = [b for b in cfg.baselines if get_baseline(b).needs_pool()]
    if drawing and train_data is None:
        raise UserError(f"the {drawing[0]} baseline needs --train-data to draw examples from",
                        hint="pass --train-data FILE or --baselines zero-shot")
    from tunesmith.cli.console import ConsoleDisplay
    from tunesmith.data.load import load_samples
    from tunesmith.eval.metrics import check_metrics
    from tunesmith.eval.runner import build_systems, run_eval, validate
    from tunesmith.events import Events
    from tunesmith.models import load_model, load_tokenizer, resolve_base
    from tunesmith.train.trainer import resolve_precision

    model, adapter = _adapter_given_as_model(model, adapter)
    check_metrics(cfg.metrics, key="--metrics")
    validate(cfg)  # unknown metrics, missing extras, bad judge: before minutes of model loading
    samples = load_samples(data) if data else []
    pool = load_samples(train_data) if train_data else []
    resolved = resolve_base(model)
    tokenizer = load_tokenizer(resolved)
    base = load_model(resolved)
    tuned = None
    if adapter is not None:
        from tunesmith.methods import load_trained

        # PEFT layout or one of ours (bottleneck); a folder that is neither is a clear UserError.
        tuned = load_trained(base, adapter)
    elif not cfg.baselines:
        tuned = base
    if tuned is None:
        systems = build_systems(None, cfg.baselines, base_model=base)
    else:
        systems = build_systems(tuned, cfg.baselines)
    lm_args = {"base": str(resolved.path), "adapter": str(adapter) if adapter else None}
    with ConsoleDisplay(out, progress=not quiet) as display:
        result = run_eval(systems, tokenizer, samples, cfg, out_dir, train_pool=pool,
                          precision=resolve_precision("auto"), events=Events(display),
                          title=f"evaluation of {adapter or model}", lm_eval_args=lm_args)
    print_report(result.report)
    for flag in ("regression", "overfitting"):
        if result.report.get(flag, {}).get("flagged"):
            out.print(f"[bold yellow]{flag} flag:[/bold yellow] " + "; ".join(result.report[flag].get("reasons", [])))
        for note in result.report.get(flag, {}).get("notes", []):
            out.print(f"{flag} note: {note}")
    if "judge" in result.report:
        j = result.report["judge"]
        out.print(f"judge win rate vs {j['baseline']}: {j['win_rate']:.3f} "
                  f"(95% CI {j['win_rate_ci95'][0]:.3f} to {j['win_rate_ci95'][1]:.3f})")
    pref = result.report.get("preference")
    if pref and "skipped" not in pref:
        lo, hi = pref["accuracy_ci95"]
        out.print(f"preference accuracy of {pref['system']} (implicit reward against the reference model): "
                  f"{pref['accuracy']:.3f} (95% CI {lo:.3f} to {hi:.3f}; {pref['n']} pairs, "
                  f"mean margin {pref['margin_mean']:.3f})")
    elif pref:
        out.print(f"preference accuracy skipped: {pref['skipped']}")
    out.print(f"report: {out_dir / 'report.md'}")
