"""Preference accuracy: on held-out pairs, does the tuned model's implicit reward prefer the chosen answer?

Runs whenever the eval data holds preference pairs (`preference` / `openai_preference` records).
The reference is the tuned model's starting point: the same weights with the adapter off, or the
separately loaded base model the base systems run on. See eval/preference.py for the reward.
"""

from __future__ import annotations

from tunesmith.eval.sections.base import EvalContext, EvalSection, SectionResult, register
from tunesmith.eval.systems import base_and_tuned

SCORING_BATCH = 8    # pairs scored per forward pass


@register
class PreferenceAccuracy(EvalSection):
    name = "preference"
    order = 70
    phase = "report"   # adds no column: the base systems are the reference, their reward is 0 by definition

    def run(self, ctx: EvalContext) -> SectionResult:
        from tunesmith.eval.preference import pair_items, pair_scores, sequence_logps, summarize

        result = SectionResult()
        if not ctx.pairs:
            return result
        pair = base_and_tuned(ctx.systems)
        if pair is None:
            reason = ("no tuned system" if not any(s.name == "tuned" for s in ctx.systems) else
                      "no reference: the tuned model has no adapter to switch off and no base system was scored")
            result.report["preference"] = {"skipped": reason, "n": len(ctx.pairs)}
            return result
        reference, tuned = pair
        items = pair_items(ctx.tokenizer, ctx.pairs, ctx.system_prompt)
        # Not eval.batch_size: scoring keeps vocabulary-wide logits for every token of every row.
        batch = SCORING_BATCH
        logps = {}
        for name, spec in (("reference", reference), ("tuned", tuned)):
            advance = ctx.progress(spec.name, "preference", len(items))
            with spec.active():
                logps[name] = sequence_logps(spec.model, items, batch_size=batch, precision=ctx.precision)
            advance(len(items))
        scores = pair_scores(logps["tuned"], logps["reference"])
        result.report["preference"] = {
            "system": tuned.name,
            "reference": "adapter_off" if reference.adapter_off else "separate",
            "precision": ctx.precision,   # bf16 autocast rounds each log-prob: small margins are noisier
            **summarize(scores, seed=ctx.cfg.seed),
        }
        result.predictions = [{"system": tuned.name, "section": "preference", "id": s.id or s.source,
                               "prompt": s.messages, "chosen": s.chosen, "rejected": s.rejected, **score.as_dict()}
                              for s, score in zip(ctx.pairs, scores)]
        return result

    def markdown(self, report: dict) -> list[str]:
        p = report.get("preference")
        if not p:
            return []
        if "skipped" in p:
            return ["", "## Preference accuracy", "", f"Skipped for {p['n']} pairs: {p['skipped']}."]
        lo, hi = p["accuracy_ci95"]
        mlo, mhi = p["margin_ci95"]
        ref = ("the same weights with the adapter switched off" if p["reference"] == "adapter_off"
               else "the separately loaded base model")
        return ["", "## Preference accuracy", "",
                f"Held-out pairs where the {p['system']} model's implicit reward "
                "(log p_tuned - log p_reference of the answer) is higher for the chosen answer than for the "
                f"rejected one: **{p['accuracy']:.3f}** (95% CI {lo:.3f} to {hi:.3f}; n = {p['n']}, "
                f"{p['ties']} ties count as misses). Mean margin {p['margin_mean']:.3f} nats "
                f"(95% CI {mlo:.3f} to {mhi:.3f}); mean reward chosen {p['reward_chosen_mean']:.3f}, "
                f"rejected {p['reward_rejected_mean']:.3f}. Reference: {ref}.",
                "",
                f"Log-prob alone (no reference) prefers the chosen answer on {p['policy_logp_accuracy']:.3f} of the "
                f"pairs for {p['system']} and {p['reference_logp_accuracy']:.3f} for the reference."]
