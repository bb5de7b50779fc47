"""Generation metrics: every system answers the chat examples; each metric of eval.metrics is a column.

The replies are shared: the judge reads them (`ctx.predictions`) and annotates their rows
(`ctx.chat_rows`), so the models generate once however many checks use the answers.
"""

from __future__ import annotations

from tunesmith.config import EvalConfig
from tunesmith.eval.metrics import METRICS, check_metrics
from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register
from tunesmith.eval.table import metric_column
from tunesmith.generation import generate


def generate_for(ctx: EvalContext, model, convs: list[list[dict]], progress=None,
                 max_new_tokens: int | None = None, eft: bool = False) -> list[str]:
    """Replies with the evaluation's decoding settings (shared by every section that generates);
    `max_new_tokens` overrides the budget (the runner has already resolved "auto" to a number);
    `eft`: decoded by emulated fine-tuning with eval.eft_large, when it is set."""
    cfg = ctx.cfg
    return generate(model, ctx.tokenizer, convs, max_new_tokens=max_new_tokens or cfg.max_new_tokens, batch_size=cfg.batch_size,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, system_prompt=ctx.system_prompt,
                    precision=ctx.precision, progress=progress, loop_guard=ctx.loop_guard,
                    prompt_lookup=cfg.prompt_lookup, draft_model=ctx.draft_model, draft_tokens=cfg.draft_tokens,
                    eft_large=ctx.eft_large if eft else None, eft_beta=cfg.eft_beta)


@register
class GenerationMetrics(EvalSection):
    name = "generation"
    order = 10

    def enabled(self, cfg: EvalConfig) -> bool:
        return bool(cfg.metrics)

    def validate(self, cfg: EvalConfig) -> None:
        check_metrics(cfg.metrics)

    def run(self, ctx: EvalContext) -> SectionResult:
        result = SectionResult()
        if not ctx.chat:
            return result
        metrics, references = ctx.cfg.metrics, ctx.references
        result.columns = [metric_column(m) for m in metrics]
        for spec in ctx.systems:
            convs = ctx.conversations(spec)
            looped_before = ctx.loop_guard.stopped if ctx.loop_guard is not None else 0
            with spec.active():
                # EFT up-scales the fine-tune; the baselines stay the small base's.
                preds = generate_for(ctx, spec.model, convs, ctx.progress(spec.name, "generation", len(convs)),
                                     eft=spec.name == "tuned")
            if ctx.loop_guard is not None:
                result.report.setdefault("loops_stopped", {})[spec.name] = ctx.loop_guard.stopped - looped_before
            ctx.predictions[spec.name] = preds
            rows = {m: METRICS[m].rows(preds, references) for m in metrics}
            result.rows[spec.name] = rows
            per_example = [m for m in metrics if METRICS[m].per_example]
            chat_rows = [{"system": spec.name, "id": s.id or s.source, "prompt": convs[i], "prediction": preds[i],
                          "reference": references[i], "scores": {m: rows[m][i] for m in per_example}}
                         for i, s in enumerate(ctx.chat)]
            ctx.chat_rows[spec.name] = chat_rows
            result.predictions += chat_rows
        if ctx.eft_large is not None:
            result.report["eft"] = {"large": ctx.cfg.eft_large, "beta": ctx.cfg.eft_beta, "system": "tuned"}
        return result

    def notes(self, report: dict) -> list[str]:
        looped = report.get("loops_stopped")
        if not looped:
            return []
        limit = report.get("generation", {}).get("loop_limit")
        counts = ", ".join(f"{name} {n}" for name, n in looped.items())
        return [f"Replies stopped in a repetition loop (one block repeated more than {limit} times; "
                f"eval.stop_loops): {counts}.", ""]
