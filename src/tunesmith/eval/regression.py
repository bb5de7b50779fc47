"""Forgetting check: base vs tuned on a small general set shipped with the project.

The set (tunesmith/assets/regression/) is 150 short general-knowledge questions in three phrasings
(scripts/make_regression_probe.py) scored with `contains_norm`, and 12 plain-English paragraphs scored by
perplexity. It says nothing about the task; it is there to notice when a fine-tune has damaged what the base
model already knew. The flag goes up when QA accuracy falls by more than `regression_acc_drop` (absolute)
and the paired 95 % interval of the difference lies below zero, or when perplexity rises by more than
`regression_ppl_rise` (relative). A drop past the threshold whose interval reaches zero is reported as a
note, not flagged: with 36 questions the flag had fired on every quickstart run, mixed or not, on drops of
two to six answers that re-scoring alone could move.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import EvalConfig
from tunesmith.data.load import load_samples
from tunesmith.eval import stats
from tunesmith.eval.metrics import METRICS
from tunesmith.eval.perplexity import fold_perplexity, perplexity
from tunesmith.generation import generate

REGRESSION_DIR = Path(__file__).resolve().parents[1] / "assets" / "regression"
QA_METRIC = "contains_norm"


def load_regression_set(folder: Path = REGRESSION_DIR):
    return load_samples(folder / "qa.jsonl"), load_samples(folder / "text.jsonl")


def score_system(model, tokenizer, cfg: EvalConfig, *, system_prompt: str | None, precision: str) -> dict:
    qa, texts = load_regression_set()
    preds = generate(model, tokenizer, [s.prompt_messages() for s in qa], max_new_tokens=cfg.regression_max_new_tokens,
                     batch_size=cfg.batch_size, system_prompt=system_prompt, precision=precision)
    scores = METRICS[QA_METRIC].rows(preds, [s.reference() for s in qa])
    ppl = perplexity(model, tokenizer, texts, window=cfg.ppl_window, stride=min(cfg.ppl_stride, cfg.ppl_window),
                     precision=precision)
    return {"qa_scores": scores, "ppl_rows": ppl.rows, "predictions": preds}


def compare(base: dict, tuned: dict, cfg: EvalConfig) -> dict:
    acc_base, acc_tuned = stats.mean(base["qa_scores"]), stats.mean(tuned["qa_scores"])
    diff, ci = stats.paired_difference(tuned["qa_scores"], base["qa_scores"], seed=cfg.seed)
    ppl_base, ppl_tuned = fold_perplexity(base["ppl_rows"]), fold_perplexity(tuned["ppl_rows"])
    rise = ppl_tuned / ppl_base - 1.0
    reasons, notes = [], []
    if acc_tuned - acc_base < -cfg.regression_acc_drop:
        fell = (f"general QA accuracy fell {acc_base:.3f} -> {acc_tuned:.3f} (more than {cfg.regression_acc_drop:.2f}; "
                f"95 % CI of the difference {ci[0]:+.3f} to {ci[1]:+.3f})")
        if ci[1] < 0:
            reasons.append(fell)
        else:
            notes.append(f"{fell}: within noise, not flagged")
    if rise > cfg.regression_ppl_rise:
        reasons.append(f"general-text perplexity rose {ppl_base:.2f} -> {ppl_tuned:.2f} "
                       f"({rise:+.1%}, more than {cfg.regression_ppl_rise:.0%})")
    return {
        "qa": {"metric": QA_METRIC, "n": len(base["qa_scores"]), "base": acc_base, "tuned": acc_tuned,
               "difference": diff, "difference_ci95": list(ci)},
        "text": {"n_tokens": sum(c for _, c in base["ppl_rows"]), "base_perplexity": ppl_base,
                 "tuned_perplexity": ppl_tuned, "relative_change": rise},
        "thresholds": {"acc_drop": cfg.regression_acc_drop, "ppl_rise": cfg.regression_ppl_rise},
        "flagged": bool(reasons), "reasons": reasons, "notes": notes,
    }
