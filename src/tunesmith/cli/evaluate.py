"""`tunesmith eval`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import app, out, print_report
from tunesmith.errors import ConfigError, UserError
from tunesmith.eval.metrics import DESCRIPTIONS

_METRIC_HELP = f"comma-separated metrics, the first is primary ({', '.join(DESCRIPTIONS)}; see docs/eval.md)"


def _split(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _eval_config(**values):
    from pydantic import ValidationError

    from tunesmith.config import EvalConfig

    try:
        return EvalConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"--{key.replace('_', '-')}: {first['msg']}") from None


@app.command("eval")
def evaluate(model: str = typer.Option("default", "--model", help="base model (see model.base)"),
             adapter: Path | None = typer.Option(None, "--adapter", help="adapter folder to evaluate"),
             data: Path | None = typer.Option(None, "--data", help="held-out data file (chats for generation "
                                                 "metrics, raw text for perplexity)"),
             out_dir: Path = typer.Option(..., "-o", "--out", help="report folder"),
             metrics: str = typer.Option("exact_match", help=_METRIC_HELP),
             baselines: str = typer.Option("zero-shot,few-shot", help="comma-separated: zero-shot, few-shot, or ''"),
             train_data: Path | None = typer.Option(None, "--train-data", help="pool for few-shot examples"),
             few_shot_k: int = typer.Option(3, help="examples in the few-shot prompt"),
             compare_to: str | None = typer.Option(None, "--compare-to", help="another model or adapter folder "
                                                      "scored beside the tuned model as system 'compare'"),
             max_new_tokens: int = typer.Option(128, help="generation budget"),
             temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples (seeded)"),
             top_p: float = typer.Option(1.0, help="nucleus sampling when temperature > 0"),
             seed: int = typer.Option(0, help="seed for few-shot draws and sampling"),
             batch_size: int = typer.Option(16, help="prompts generated together (left-padded)"),
             max_examples: int = typer.Option(0, help="score at most N examples (0 = all)"),
             perplexity: bool = typer.Option(True, "--perplexity/--no-perplexity", help="also report perplexity"),
             ppl_window: int = typer.Option(512, help="perplexity sliding-window length in tokens"),
             ppl_stride: int = typer.Option(256, help="perplexity stride between windows (<= window)"),
             regression: bool = typer.Option(True, "--regression/--no-regression",
                                             help="base vs tuned on the shipped general set (forgetting check)"),
             code_tasks: Path | None = typer.Option(None, "--code-tasks", help="JSONL of code tasks for pass@k"),
             code_samples: int = typer.Option(5, help="programs sampled per code task"),
             pass_k: str = typer.Option("1", help="comma-separated k values of pass@k"),
             judge: str | None = typer.Option(None, help="pairwise judge: local:MODEL or openai:MODEL"),
             judge_url: str | None = typer.Option(None, help="base URL of an OpenAI-compatible judge"),
             judge_prompt: Path | None = typer.Option(None, help="your own judge prompt file"),
             lm_eval_tasks: str = typer.Option("", help="comma-separated lm-evaluation-harness tasks (if installed)"),
             quiet: bool = typer.Option(False, help="no progress bars")):
    """Score a model (and its adapter) against base zero-shot / few-shot baselines."""
    try:
        ks = [int(k) for k in _split(pass_k)]
    except ValueError:
        raise ConfigError(f"--pass-k: expected comma-separated integers, got '{pass_k}'") from None
    cfg = _eval_config(metrics=_split(metrics) if data else [], baselines=_split(baselines), few_shot_k=few_shot_k,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                       batch_size=batch_size, max_examples=max_examples, perplexity=perplexity, ppl_window=ppl_window,
                       ppl_stride=ppl_stride, regression=regression,
                       code_tasks=str(code_tasks) if code_tasks else None, code_samples=code_samples, pass_k=ks or [1],
                       judge=judge, judge_url=judge_url, judge_prompt=str(judge_prompt) if judge_prompt else None,
                       compare_to=compare_to, lm_eval_tasks=_split(lm_eval_tasks))
    if data is None and code_tasks is None:
        raise UserError("nothing to evaluate", hint="pass --data FILE (held-out examples) and/or --code-tasks FILE")
    if "few-shot" in cfg.baselines and train_data is None:
        raise UserError("the few-shot baseline needs --train-data to draw examples from",
                        hint="pass --train-data FILE or --baselines zero-shot")
    from tunesmith.data.load import load_samples
    from tunesmith.eval.runner import build_systems, run_eval, validate
    from tunesmith.models import load_model, load_tokenizer, resolve_base
    from tunesmith.train.trainer import resolve_precision

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
        systems = build_systems(None, cfg.baselines, base_model=base, few_shot_k=few_shot_k)
    else:
        systems = build_systems(tuned, cfg.baselines, few_shot_k=few_shot_k)
    lm_args = {"base": str(resolved.path), "adapter": str(adapter) if adapter else None}
    result = run_eval(systems, tokenizer, samples, cfg, out_dir, train_pool=pool, precision=resolve_precision("auto"),
                      show_progress=not quiet, title=f"evaluation of {adapter or model}", lm_eval_args=lm_args)
    print_report(result.report)
    for flag in ("regression", "overfitting"):
        if result.report.get(flag, {}).get("flagged"):
            out.print(f"[bold yellow]{flag} flag:[/bold yellow] " + "; ".join(result.report[flag].get("reasons", [])))
    if "judge" in result.report:
        j = result.report["judge"]
        out.print(f"judge win rate vs {j['baseline']}: {j['win_rate']:.3f} "
                  f"(95% CI {j['win_rate_ci95'][0]:.3f} to {j['win_rate_ci95'][1]:.3f})")
    out.print(f"report: {out_dir / 'report.md'}")
