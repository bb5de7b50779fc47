"""Forgetting check: base vs tuned on the shipped general set (see eval/regression.py)."""

from __future__ import annotations

from tunesmith.config import EvalConfig
from tunesmith.data.self_answers import HELP
from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register
from tunesmith.eval.systems import base_and_tuned

SKIPPED = {"skipped": "needs both the base and the tuned model"}


@register
class Forgetting(EvalSection):
    name = "forgetting"
    order = 50
    phase = "report"

    def enabled(self, cfg: EvalConfig) -> bool:
        return cfg.regression

    def run(self, ctx: EvalContext) -> SectionResult:
        from tunesmith.eval import regression

        pair = base_and_tuned(ctx.systems)
        if pair is None:
            return SectionResult(report={"regression": dict(SKIPPED)})
        scored = {}
        for spec in pair:
            advance = ctx.progress(spec.name, "forgetting", 1)
            with spec.active():
                scored[spec.name] = regression.score_system(spec.model, ctx.tokenizer, ctx.cfg,
                                                            system_prompt=ctx.system_prompt, precision=ctx.precision)
            advance(1)
        return SectionResult(report={"regression": regression.compare(scored["base"], scored["tuned"], ctx.cfg)})

    def markdown(self, report: dict) -> list[str]:
        r = report.get("regression")
        if not r:
            return []
        if "skipped" in r:
            return ["", "## Regression (forgetting)", "", f"Skipped: {r['skipped']}."]
        qa, text = r["qa"], r["text"]
        flag = "**possible catastrophic forgetting**: " + "; ".join(r["reasons"]) if r["flagged"] else "no forgetting flag"
        return ["", "## Regression (forgetting)", "",
                "Shipped general set, base vs tuned.", "",
                "| check | base | tuned | change |", "|---|---|---|---|",
                f"| general QA ({qa['metric']}, n={qa['n']}) | {qa['base']:.3f} | {qa['tuned']:.3f} | "
                f"{qa['difference']:+.3f} [{qa['difference_ci95'][0]:+.3f}, {qa['difference_ci95'][1]:+.3f}] |",
                f"| general-text perplexity ({text['n_tokens']} tokens) | {text['base_perplexity']:.2f} | "
                f"{text['tuned_perplexity']:.2f} | {text['relative_change']:+.1%} |", "",
                f"Thresholds: accuracy drop > {r['thresholds']['acc_drop']} with the interval below zero, perplexity "
                f"rise > {r['thresholds']['ppl_rise']:.0%}. Result: {flag}."] + \
            [f"Note: {n}." for n in r.get("notes", [])] + \
            ([HELP] if r["flagged"] else [])
