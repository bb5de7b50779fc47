"""Score systems on held-out data and write the report: a loop over the registered sections.

The runner knows the systems (eval/systems.py), the table (eval/table.py) and the report files
(eval/report.py), and no check by name: each check is a section in eval/sections/. The order of
work is fixed so every mistake fails as early as it can:

1. every section validates the config (nothing loaded yet);
2. enabled sections load their own inputs (code tasks, the judge);
3. "columns" sections score every system, and the table folds their columns (the first is primary);
4. "report" sections run with the table at hand (the judge needs its best baseline);
5. report.json, report.md, report.png and predictions.jsonl are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import EvalConfig
from tunesmith.data.lengths import CODE_NEW_TOKENS, NewTokens, model_context, resolve_max_new_tokens
from tunesmith.data.schema import Sample
from tunesmith.errors import DataError
from tunesmith.eval.baselines import get_baseline
from tunesmith.eval.overfitting import overfitting_check, read_train_log
from tunesmith.eval.report import write_report
from tunesmith.eval.sections import EvalContext, SectionResult, registered
from tunesmith.eval.systems import (
    SYSTEM_NAMES,
    SystemSpec,
    baseline_weights,
    build_systems,
    few_shot_messages,
    load_compare_system,
)
from tunesmith.eval.table import Column, build_report, metric_column
from tunesmith.events import EvalFinished, Events

# Callers import these from here: the runner is the evaluation's entry point.
__all__ = ["SYSTEM_NAMES", "Column", "EvalResult", "SystemSpec", "baseline_weights", "build_report", "build_systems",
           "few_shot_messages", "load_compare_system", "metric_column", "overfitting_check", "read_train_log",
           "run_eval", "validate"]


@dataclass
class EvalResult:
    report: dict
    predictions: dict[str, list[str]] = field(default_factory=dict)


def validate(cfg: EvalConfig) -> None:
    """Every check that needs no model: run it before loading or generating anything."""
    for name in cfg.baselines:
        get_baseline(name).validate(cfg)   # unknown names, a missing or unreadable eval.docs
    for cls in registered():
        cls().validate(cfg)


def run_eval(systems: list[SystemSpec], tokenizer, samples: list[Sample], cfg: EvalConfig, out_dir: Path, *,
             train_pool: list[Sample] | None = None, system_prompt: str | None = None, precision: str = "fp32",
             training: dict | None = None, events: Events | None = None, title: str = "evaluation",
             lm_eval_args: dict | None = None, train_log: Path | None = None, loop_guard=None) -> EvalResult:
    """Score `systems` and write the report to `out_dir`.

    Progress goes to `events` as EvalProgress per stage and system, then one EvalFinished; None
    runs silently. With `training`, the overfitting check reads `train_log` (default:
    out_dir/metrics.jsonl, where a training run writes it). `loop_guard` (generation/loops.LoopGuard):
    the repetition rule when the caller has already read it from `train_pool`; else it is read here.
    """
    validate(cfg)
    # A preference pair is also a chat example: its prompt is answered, with the chosen answer as
    # reference; so is unpaired feedback marked desirable (KTO data), with its completion as reference.
    chat = [s for s in samples if s.kind in ("chat", "preference") or (s.kind == "unpaired" and s.label)]
    texts = [s for s in samples if s.kind == "text"]
    if cfg.max_examples:
        chat, texts = chat[: cfg.max_examples], texts[: cfg.max_examples]
    pairs = [s for s in chat if s.kind == "preference"]
    budget = resolve_budget(cfg.max_new_tokens, tokenizer, chat, systems)
    # Every section reads one integer (generation, pass@k, the judge's answers); programs, which have
    # no reference answer to measure, get at least CODE_NEW_TOKENS under "auto".
    cfg = cfg.model_copy(update={"max_new_tokens": budget.resolved})
    code_budget = min(max(budget.resolved, CODE_NEW_TOKENS), budget.cap) if budget.auto else budget.resolved
    ctx = EvalContext(systems=list(systems), tokenizer=tokenizer, cfg=cfg, chat=chat, texts=texts, pairs=pairs,
                      train_pool=train_pool or [], system_prompt=system_prompt, precision=precision, events=events,
                      lm_eval_args=lm_eval_args, out_dir=Path(out_dir), code_max_new_tokens=code_budget)
    if cfg.stop_loops and chat:
        from tunesmith.generation.loops import LoopGuard

        # What counts as a loop is read from the training answers when the run has them (a held-out
        # answer should not shape its own generation), else from the eval set's.
        ctx.loop_guard = loop_guard or LoopGuard.from_samples(tokenizer, train_pool or chat)
    if cfg.draft_model and chat:
        from tunesmith.generation.speculate import load_draft_model

        ctx.draft_model = load_draft_model(cfg.draft_model, tokenizer, "the evaluated model")
    if cfg.eft_large and chat:
        from tunesmith.generation.speculate import load_draft_model

        ctx.eft_large = load_draft_model(cfg.eft_large, tokenizer, "the evaluated model")
    sections = [cls() for cls in registered()]
    sections = [s for s in sections if s.enabled(cfg)]
    own_inputs = sum(section.prepare(ctx) or 0 for section in sections)
    if not chat and not texts and not own_inputs:
        raise DataError("nothing to evaluate: no chat, preference or text examples in the eval data",
                        hint="pass a file of conversations or preference pairs (or raw text for perplexity), "
                             "or eval.code_tasks")
    if cfg.compare_to and not any(s.name == "compare" for s in ctx.systems):
        tuned = next((s.model for s in ctx.systems if s.name == "tuned"), None)
        ctx.systems.append(load_compare_system(cfg.compare_to, tuned))

    # Every system gets a row of the table, in system order, even one no column scores.
    ctx.rows = {spec.name: {} for spec in ctx.systems}
    results: list[SectionResult] = []
    for section in sections:
        if section.phase == "columns":
            results.append(_add(ctx, section.run(ctx)))
    log_rows = read_train_log(train_log or Path(out_dir) / "metrics.jsonl") if training is not None else None
    ctx.report = build_report(ctx.rows, ctx.columns, cfg, n=len(chat), training=training, precision=precision,
                              title=title, baseline=baseline_weights(ctx.systems), train_log=log_rows)
    report = ctx.report
    report["n_text_examples"] = len(texts)
    if budget.auto:
        report["generation"].update(max_new_tokens_setting="auto", longest_reference_tokens=budget.longest_reference)
        report["max_new_tokens"] = budget.as_dict()
    if ctx.loop_guard is not None:
        report["generation"]["loop_limit"] = ctx.loop_guard.limit
    for result in results:
        report.update(result.report)
    for section in sections:
        if section.phase == "report":
            result = section.run(ctx)
            report.update(result.report)
            results.append(result)
    write_report(out_dir, report, [row for result in results for row in result.predictions])
    if events is not None:
        events.emit(EvalFinished(report.get("verdict", ""), str(Path(out_dir) / "report.md")))
    return EvalResult(report, ctx.predictions)



def resolve_budget(setting: int | str, tokenizer, chat: list[Sample], systems: list[SystemSpec]) -> NewTokens:
    """`eval.max_new_tokens` as a number: "auto" reads the token counts of the reference answers
    (data/lengths.py), capped by the context of the first system's model."""
    if setting != "auto":
        return resolve_max_new_tokens(setting)
    references = [s.reference() for s in chat]
    lengths = [len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"]] if references else []
    model = next((spec.model for spec in systems if spec.model is not None), None)
    return resolve_max_new_tokens("auto", lengths, model_context(model, tokenizer))


def _add(ctx: EvalContext, result: SectionResult) -> SectionResult:
    for col in result.columns:
        # A column no system has rows for (its section found nothing to score) would be an empty
        # table column and could become the primary metric: leave it out.
        if any(col.name in per_col for per_col in result.rows.values()):
            ctx.columns[col.name] = col
    for system, per_col in result.rows.items():
        ctx.rows.setdefault(system, {}).update(per_col)
    return result
