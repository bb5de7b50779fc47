"""lm-evaluation-harness tasks on base and tuned, when the package and the tasks' data are here."""

from __future__ import annotations

from tunesmith.config import EvalConfig
from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register
from tunesmith.eval.sections.forgetting import SKIPPED
from tunesmith.eval.systems import base_and_tuned


@register
class LmEval(EvalSection):
    name = "lm-eval"
    order = 60
    phase = "report"

    def enabled(self, cfg: EvalConfig) -> bool:
        return bool(cfg.lm_eval_tasks)

    def run(self, ctx: EvalContext) -> SectionResult:
        from tunesmith.eval import lm_harness

        cfg, pair = ctx.cfg, base_and_tuned(ctx.systems)
        if pair is None:
            return SectionResult(report={"lm_eval": dict(SKIPPED)})
        base, tuned = pair
        advance = ctx.progress("base and tuned", "lm-eval", 1)
        paths = ctx.lm_eval_args
        if paths:  # from the CLI: the base folder, and the adapter through lm-eval's own peft= argument
            base_args = {"pretrained": paths["base"]}
            tuned_args = {"pretrained": paths["base"], **({"peft": paths["adapter"]} if paths.get("adapter") else {})}
            out = lm_harness.run(cfg.lm_eval_tasks, base_args=base_args, tuned_args=tuned_args,
                                 limit=cfg.lm_eval_limit, seed=cfg.seed)
        else:
            out = lm_harness.run(cfg.lm_eval_tasks, base_args={"pretrained": base.model, "tokenizer": ctx.tokenizer},
                                 tuned_args={"pretrained": tuned.model, "tokenizer": ctx.tokenizer},
                                 limit=cfg.lm_eval_limit, seed=cfg.seed, base_context=base.active)
        advance(1)
        return SectionResult(report={"lm_eval": out})

    def markdown(self, report: dict) -> list[str]:
        r = report.get("lm_eval")
        if not r:
            return []
        if "skipped" in r:
            return ["", "## lm-evaluation-harness", "", f"Skipped: {r['skipped']}."]
        lines = ["", "## lm-evaluation-harness", "", "| task | metric | base | tuned | difference ± stderr |",
                 "|---|---|---|---|---|"]
        for task, metrics in r["results"].items():
            for key, v in metrics.items():
                se = f" ± {v['stderr']:.3f}" if v["stderr"] is not None else ""
                lines.append(f"| {task} | {key} | {v['base']:.3f} | {v['tuned']:.3f} | {v['difference']:+.3f}{se} |")
        return lines
