"""Perplexity columns: `response_perplexity` on the assistant tokens of chats, `perplexity` on raw text."""

from __future__ import annotations

from tunesmith.config import EvalConfig
from tunesmith.errors import ConfigError
from tunesmith.eval.perplexity import fold_perplexity, sample_items, sequence_nll
from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register
from tunesmith.eval.table import Column

PPL_COLUMNS = {"perplexity": "all tokens of the raw-text examples",
               "response_perplexity": "assistant tokens of the chat examples"}

# Windows per forward pass; not eval.batch_size: scoring keeps vocabulary-wide logits for every token.
SCORING_BATCH = 4


@register
class Perplexity(EvalSection):
    name = "perplexity"
    order = 20

    def enabled(self, cfg: EvalConfig) -> bool:
        return cfg.perplexity

    def validate(self, cfg: EvalConfig) -> None:
        # Checked even with perplexity off: the forgetting check scores text with the same window.
        if cfg.ppl_stride > cfg.ppl_window:
            raise ConfigError(f"eval.ppl_stride ({cfg.ppl_stride}) is larger than eval.ppl_window ({cfg.ppl_window})",
                              hint="a stride past the window would skip tokens; use ppl_stride <= ppl_window")

    def run(self, ctx: EvalContext) -> SectionResult:
        cfg = ctx.cfg
        result = SectionResult()
        subsets = [(col, subset) for col, subset in (("response_perplexity", ctx.chat), ("perplexity", ctx.texts))
                   if subset]
        result.columns = [Column(col, fold_perplexity, False, higher_is_better=False) for col, _ in subsets]
        items = {col: sample_items(ctx.tokenizer, subset, ctx.system_prompt) for col, subset in subsets}
        for spec in ctx.systems:
            rows = result.rows.setdefault(spec.name, {})
            for col, _ in subsets:
                # A prompting system is the base model: its perplexity is zero-shot's.
                if spec.adds_context and "base_zero_shot" in result.rows:
                    rows[col] = result.rows["base_zero_shot"][col]
                    continue
                advance = ctx.progress(spec.name, "perplexity", len(items[col]))
                with spec.active():
                    rows[col] = sequence_nll(spec.model, items[col], window=cfg.ppl_window, stride=cfg.ppl_stride,
                                             batch_size=SCORING_BATCH, precision=ctx.precision)
                advance(len(items[col]))
        if subsets:
            result.report["perplexity"] = {"window": cfg.ppl_window, "stride": cfg.ppl_stride,
                                           "scored": {c: d for c, d in PPL_COLUMNS.items() if c in items}}
        return result

    def notes(self, report: dict) -> list[str]:
        p = report.get("perplexity")
        if not p:
            return []
        scored = "; ".join(f"{k}: {v}" for k, v in p["scored"].items())
        return [f"Perplexity: sliding window of {p['window']} tokens, stride {p['stride']} ({scored})."]
