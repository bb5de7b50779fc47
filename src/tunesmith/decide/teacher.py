"""The teacher in `tunesmith decide`: a stronger model, prompted zero-shot and few-shot, as two more systems.

The teacher is any model `tunesmith synth` can use (synth/teacher.py): an OpenAI-compatible endpoint
(`openai:MODEL` with `--teacher-url`) or a local model or adapter (`local:PATH`). It answers the same
prompts the base model's zero-shot and few-shot systems answer (the same demonstrations, drawn from the
same pool), and its answers are scored by the same metrics, with intervals by the same rule as the
evaluation's table (eval/table.py). Latency is timed on the first `latency_requests` requests sent one
at a time, as the other systems are; tokens per request are the teacher's own counts (the endpoint's
`usage`); money uses `--teacher-price-per-1k-tokens`. The teacher's compute happens elsewhere, so its
CPU-seconds are not reported.

Its place in the decision: a fine-tune is measured against the prompting systems of the model it tunes;
the teacher adds the other question, whether a larger model would simply do better, stated next to the
recommendation (not folded into it) by comparing intervals.
"""

from __future__ import annotations

import os
import time

from tunesmith.data.schema import Sample
from tunesmith.decide.measure import percentile
from tunesmith.errors import UserError
from tunesmith.eval import stats
from tunesmith.eval.baselines import get_baseline
from tunesmith.eval.metrics import METRICS

TEACHER_BASELINES = ("zero-shot", "few-shot")


def system_name(baseline: str) -> str:
    return "teacher_" + baseline.replace("-", "_")


def open_teacher(opts):
    """The teacher of `opts`, checked to answer (a one-line UserError naming it and its URL otherwise)."""
    from tunesmith.synth.cache import RequestCache
    from tunesmith.synth.teacher import Pricing, TeacherSettings, make_teacher

    prices = opts.teacher_token_prices
    settings = TeacherSettings(temperature=0.0, pricing=Pricing(*prices) if prices else Pricing())
    # No request cache: every answer is asked for, so latency and tokens are this run's.
    teacher = make_teacher(opts.teacher, settings, RequestCache(None), base_url=opts.teacher_url,
                           api_key=os.environ.get(opts.teacher_key_env), flag="--teacher")
    teacher.check()
    return teacher


def _answers(teacher, convs: list[list[dict]], n_timed: int, stage: str, max_tokens: int):
    """(replies, latencies): the first `n_timed` conversations one at a time, timed; the rest together."""
    replies, latency = [], []
    for conv in convs[:n_timed]:
        start = time.perf_counter()
        replies += teacher.chat_many([conv], stage=stage, temperature=0.0, max_tokens=max_tokens)
        latency.append(time.perf_counter() - start)
    replies += teacher.chat_many(convs[n_timed:], stage=stage, temperature=0.0, max_tokens=max_tokens)
    failed = [r for r in replies if r.text is None]
    if failed:
        raise UserError(f"--teacher {teacher.name}: {len(failed)} of {len(replies)} requests failed ({failed[0].error})",
                        hint="check --teacher-url and the endpoint's logs, then run decide again")
    return replies, latency


def score_teacher(teacher, test: list[Sample], pool: list[Sample], eval_cfg, *, metrics: list[str],
                  max_new_tokens: int, latency_requests: int, seed: int, priced: bool) -> dict[str, dict]:
    """{system name: entry}: quality per metric with its 95 % interval, and the serving figures the report
    holds for every system (latency p50 / p95, tokens per request, and money per 1,000 requests when the
    teacher has a price)."""
    refs = [s.reference() for s in test]
    out: dict[str, dict] = {}
    zero_shot_prompt = None
    for baseline in TEACHER_BASELINES:
        name = system_name(baseline)
        convs = get_baseline(baseline).conversations(test, pool, eval_cfg)
        replies, latency = _answers(teacher, convs, min(latency_requests, len(convs)), f"decide {name}",
                                    max_new_tokens)
        preds = [r.text.strip() for r in replies]
        quality = {}
        for metric in metrics:
            col = METRICS[metric]
            rows = col.rows(preds, refs)
            quality[metric] = col.fold(rows)
            quality[metric + "_ci95"] = list(stats.interval(rows, seed=seed) if col.per_example
                                              else stats.bootstrap_fold(rows, col.fold, seed=seed))
        n = len(replies)
        prompt = sum(r.prompt_tokens for r in replies) / n
        completion = sum(r.completion_tokens for r in replies) / n
        zero_shot_prompt = prompt if zero_shot_prompt is None else zero_shot_prompt
        cost = teacher.settings.pricing.cost(prompt, completion) if priced else None
        out[name] = {"quality": quality, "predictions": preds, "requests": len(latency),
                     "latency_p50_s": percentile(latency, 50), "latency_p95_s": percentile(latency, 95),
                     "prompt_tokens_per_request": prompt, "completion_tokens_per_request": completion,
                     "prompt_tokens_added": prompt - zero_shot_prompt,
                     "money_per_1k_requests": None if cost is None else 1000 * cost}
    return out


def report_entries(scored: dict[str, dict], metric: str, teacher_name: str) -> dict[str, dict]:
    """The teacher systems as report.json's `systems` entries (the other systems' keys)."""
    out = {}
    for name, s in scored.items():
        out[name] = {
            "label": f"teacher {name.removeprefix('teacher_').replace('_', '-')} ({teacher_name})",
            "quality": s["quality"][metric], "quality_ci95": s["quality"][metric + "_ci95"],
            "requests": s["requests"], "latency_p50_s": s["latency_p50_s"], "latency_p95_s": s["latency_p95_s"],
            "cpu_s_per_1k_requests": None,   # the teacher computes elsewhere
            "prompt_tokens_per_request": s["prompt_tokens_per_request"],
            "completion_tokens_per_request": s["completion_tokens_per_request"],
            "prompt_tokens_added": s["prompt_tokens_added"], "money_per_1k_requests": s["money_per_1k_requests"],
            "one_time_cpu_s": 0.0, "one_time_money": 0.0,
        }
    return out


def teacher_verdict(systems: dict[str, dict], metric: str, higher_is_better: bool) -> dict:
    """The best teacher system against the fine-tune, by their 95 % intervals (unpaired: the systems answer
    the same requests, but the comparison only claims a difference where the intervals do not overlap)."""
    names = [n for n in systems if n.startswith("teacher_")]
    sign = 1 if higher_is_better else -1
    best = max(names, key=lambda n: sign * systems[n]["quality"])
    teacher, tuned = systems[best], systems["tuned"]
    t_lo, t_hi = teacher["quality_ci95"]
    f_lo, f_hi = tuned["quality_ci95"]
    figures = (f"{teacher['label']} {teacher['quality']:.3f} [{t_lo:.3f}, {t_hi:.3f}] against the fine-tune's "
               f"{tuned['quality']:.3f} [{f_lo:.3f}, {f_hi:.3f}] {metric}")
    teacher_better = t_lo > f_hi if higher_is_better else t_hi < f_lo
    tuned_better = f_lo > t_hi if higher_is_better else f_hi < t_lo
    if teacher_better:
        verdict = "teacher better"
        sentence = (f"the teacher does better: {figures}; distil it into training data (`tunesmith synth relabel`) "
                    "and fine-tune on that, or serve the teacher")
    elif tuned_better:
        verdict = "fine-tune better"
        sentence = f"the fine-tune beats the teacher: {figures}"
    else:
        verdict = "not distinguishable"
        sentence = f"the fine-tune and the teacher are not distinguishable here: {figures}"
    return {"best": best, "verdict": verdict, "sentence": sentence}
