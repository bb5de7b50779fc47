"""LLM-as-judge: the tuned replies against the best baseline's, each pair judged in both orders."""

from __future__ import annotations

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register


def _last_user(sample: Sample) -> str:
    users = [m["content"] for m in sample.prompt_messages() if m["role"] == "user"]
    return users[-1] if users else ""


@register
class Judge(EvalSection):
    name = "judge"
    order = 40
    phase = "report"   # judges against the table's best baseline

    def enabled(self, cfg: EvalConfig) -> bool:
        return bool(cfg.judge)

    def validate(self, cfg: EvalConfig) -> None:
        if cfg.judge:
            from tunesmith.eval.judge import check_judge, load_prompt

            check_judge(cfg.judge)
            load_prompt(cfg.judge_prompt)

    def prepare(self, ctx: EvalContext) -> int:
        from tunesmith.eval.judge import load_prompt, make_judge

        # Before any generation: a judge that cannot load fails now, not after minutes of answers.
        self.prompt = load_prompt(ctx.cfg.judge_prompt)
        self.judge = make_judge(ctx.cfg.judge, ctx.cfg.judge_url)
        return 0

    def run(self, ctx: EvalContext) -> SectionResult:
        from tunesmith.eval.judge import pairwise, summarize

        result = SectionResult()
        predictions = ctx.predictions
        if "tuned" not in predictions:
            return result
        against = (ctx.report.get("comparison", {}).get("baseline")
                   or next((n for n in predictions if n != "tuned"), None))
        if against is None:
            return result
        questions = [_last_user(s) for s in ctx.chat]
        verdicts = pairwise(self.judge, questions, predictions["tuned"], predictions[against], ctx.references,
                            self.prompt, progress=ctx.progress("tuned", "judge", len(questions)))
        result.report["judge"] = {"judge": self.judge.name, "baseline": against,
                                  "prompt_file": str(ctx.cfg.judge_prompt or "shipped"),
                                  **summarize(verdicts, seed=ctx.cfg.seed)}
        # The verdicts belong beside the answers they judged, on the tuned system's rows.
        for row, v in zip(ctx.chat_rows.get("tuned", []), verdicts):
            row["judge"] = {"against": against, "tuned_first": v.first, "tuned_second": v.second,
                            "outcome": v.outcome}
        return result

    def markdown(self, report: dict) -> list[str]:
        j = report.get("judge")
        if not j:
            return []
        lo, hi = j["win_rate_ci95"]
        return ["", "## Judge", "",
                f"Pairwise win rate of tuned against {j['baseline']} judged by {j['judge']}: **{j['win_rate']:.3f}** "
                f"(95% CI {lo:.3f} to {hi:.3f}; {j['wins']} wins, {j['ties']} ties, {j['losses']} losses over "
                f"{j['n']} pairs). Each pair was judged in both orders; {j['inconsistent']} pairs got opposite "
                "verdicts and count as ties (ties count as half a win)."]
