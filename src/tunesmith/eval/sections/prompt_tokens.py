"""Prompt tokens per system: what each prompting baseline adds to every request.

The count is of the token ids the model is given (the chat template applied, as generation does),
so it is what a served request would cost; "added" is that minus the example's own prompt.
"""

from __future__ import annotations

from tunesmith.data.tokenize import prompt_ids
from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register
from tunesmith.eval.stats import mean


@register
class PromptTokens(EvalSection):
    name = "prompt_tokens"
    order = 15
    phase = "report"

    def run(self, ctx: EvalContext) -> SectionResult:
        result = SectionResult()
        if not ctx.chat:
            return result
        own = [len(prompt_ids(ctx.tokenizer, s.prompt_messages(), ctx.system_prompt)) for s in ctx.chat]
        entry = {}
        for spec in ctx.systems:
            counts = [len(prompt_ids(ctx.tokenizer, conv, ctx.system_prompt)) for conv in ctx.conversations(spec)]
            added = [c - o for c, o in zip(counts, own)]
            entry[spec.name] = {"mean": mean(counts), "added_mean": mean(added), "max": max(counts),
                                "per_example": counts}
        result.report["prompt_tokens"] = entry
        return result

    def notes(self, report: dict) -> list[str]:
        entry = report.get("prompt_tokens")
        if not entry:
            return []
        parts = [f"{name} {e['mean']:.1f} ({e['added_mean']:+.1f})" for name, e in entry.items()]
        return ["Prompt tokens per request (added by the system's demonstrations or passages): " + "; ".join(parts) + "."]
