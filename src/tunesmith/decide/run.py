"""`tunesmith decide`: prompting, retrieval and a quick fine-tune compared on the user's own data.

The order makes every mistake fail before anything is trained: the data, the test split, the
metrics and the documents are checked; a 3-step probe run measures the step time, from which the
budget gives max_steps (a budget smaller than one step stops here). Then one pipeline run fine-tunes
with LoRA and scores every system on the test set with the evaluation's own table (intervals,
paired comparison, overfitting and forgetting checks); the learning-curve runs fine-tune on 25 %
and 50 % of the data; each system answers test requests one at a time for latency and CPU cost;
and the report weighs it all into a recommendation.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.load import load_samples
from tunesmith.data.schema import Sample
from tunesmith.data.split import split_items
from tunesmith.decide.clock import TrainClock
from tunesmith.decide.options import DecideOptions
from tunesmith.decide.plan import plan_steps
from tunesmith.decide.report import write_decide_report
from tunesmith.errors import DataError
from tunesmith.events import Events
from tunesmith.io_utils import write_jsonl

VAL_SPLIT = 0.1      # held out of train for the overfitting check (train/validation gap)
PROBE_STEPS = 3
MIN_TEST = 10


def prompting_baselines(opts: DecideOptions) -> list[str]:
    return ["zero-shot", "few-shot", "retrieval-few-shot"] + (["rag"] if opts.docs else [])


def eval_settings(opts: DecideOptions, test_file: Path, baselines: list[str], full: bool) -> dict:
    return {"data": str(test_file), "metrics": opts.metrics, "baselines": baselines, "docs": opts.docs,
            "few_shot_k": opts.few_shot_k, "rag_k": opts.rag_k, "max_new_tokens": opts.max_new_tokens,
            "seed": opts.seed, "regression": opts.regression and full, "perplexity": full}


def finetune_config(opts: DecideOptions, train_file: Path, out_dir: Path, max_steps: int, *,
                    val_split: float = VAL_SPLIT, evaluation: dict | None = None) -> RunConfig:
    """The quick fine-tune as a run config: LoRA on every linear layer, `max_steps` from the budget."""
    return RunConfig.model_validate({
        "model": {"base": opts.model},
        "data": {"train": str(train_file), "val_split": val_split},
        "method": {"name": "lora", "r": opts.lora_r, "alpha": 2 * opts.lora_r, "dropout": 0.0,
                   "target_modules": "all-linear"},
        "train": {"max_steps": max_steps, "batch_size": opts.batch_size, "lr": opts.lr, "seed": opts.seed},
        "eval": evaluation if evaluation is not None else {"enabled": False},
        "output": {"dir": str(out_dir), "merge": False},
    })


def chats(samples: list[Sample], path) -> list[Sample]:
    out = [s for s in samples if s.kind == "chat"]
    if not out:
        raise DataError(f"{path}: no conversations (instruction/response pairs or chats) to compare systems on",
                        hint="decide needs chat examples with a reference answer")
    return out


def split_data(opts: DecideOptions, data: Path) -> tuple[list[Sample], list[Sample]]:
    train = chats(load_samples(data), data)
    if opts.test:
        test = chats(load_samples(opts.test), opts.test)
    else:
        train, test = split_items(train, opts.test_fraction, opts.seed)
    if len(test) < 2 or len(train) < 4:
        raise DataError(f"{data}: {len(train)} training and {len(test)} test examples are too few to compare systems",
                        hint="give at least a few dozen examples (hundreds for a fine-tune worth trusting)")
    return train, test


def subset(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """A seeded random `fraction` of the examples, in their original order."""
    keep = sorted(random.Random(seed).sample(range(len(samples)), max(2, round(fraction * len(samples)))))
    return [samples[i] for i in keep]


def decide(data: str | Path, out_dir: str | Path, opts: DecideOptions | None = None, *,
           events: Events | None = None) -> dict:
    """Compare the systems on `data` and write report.md, report.json and report.png to `out_dir`."""
    from tunesmith.decide.teacher import open_teacher, score_teacher
    from tunesmith.eval.metrics import check_metrics
    from tunesmith.eval.runner import validate as validate_eval
    from tunesmith.models import resolve_base
    from tunesmith.pipeline import run, split_samples

    opts = opts or DecideOptions()
    out = Path(out_dir)
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = time.perf_counter() - started - sum(phases.values())

    listeners = list(events.listeners) if events is not None else []
    say = Events(*listeners)

    # 1. Every check that needs no training.
    train, test = split_data(opts, Path(data))
    baselines = prompting_baselines(opts)
    from tunesmith.config import EvalConfig

    check_metrics(opts.metrics, key="--metrics")   # named as the user set them, before eval's own check
    validate_eval(EvalConfig(**eval_settings(opts, Path("test.jsonl"), baselines, True)))
    resolve_base(opts.model)
    teacher = open_teacher(opts) if opts.teacher else None   # an unreachable teacher stops the run here
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    train_file, test_file = folder / "train.jsonl", folder / "test.jsonl"
    write_jsonl(train_file, [s.to_dict() for s in train])
    write_jsonl(test_file, [s.to_dict() for s in test])
    say.message(f"decide: {len(train)} training / {len(test)} test examples"
                + ("" if opts.test else f" (test_fraction={opts.test_fraction} held out)"))

    # 2. The step time, from a throwaway run of a few steps, sets the budget's max_steps.
    probe_clock = TrainClock()
    run(finetune_config(opts, train_file, out / "probe", PROBE_STEPS, val_split=0.0), events=Events(probe_clock))
    shutil.rmtree(out / "probe", ignore_errors=True)
    n_fit = len(train) - round(VAL_SPLIT * len(train))
    plan = plan_steps(opts.budget_minutes * 60, probe_clock.step_seconds(), n_fit, opts.batch_size,
                      opts.max_epochs, opts.learning_curve)
    lap("checks_and_probe")
    say.message(f"decide: one step takes {plan.step_s:.2f} s; fine-tune steps per data fraction {plan.steps}"
                + (" (the budget has no room for the learning curve)" if plan.curve_dropped else ""))

    # 3. The fine-tune and every system scored on the test set.
    clock = TrainClock()
    full = run(finetune_config(opts, train_file, out / "finetune", plan.steps[1.0],
                               evaluation=eval_settings(opts, test_file, baselines, True)),
               events=Events(clock, *listeners))
    quality = full.eval_report
    lap("fine_tune_and_scoring")
    training = {"steps": full.train.steps, "cpu_s": clock.cpu_s, "wall_s": clock.wall_s,
                "tokens": full.train.tokens, "examples": n_fit}

    # 4. The learning curve: the same epochs on less data.
    curve = []
    for fraction in sorted(f for f in plan.steps if f < 1.0):
        part = subset(train, fraction, opts.seed)
        part_file = folder / f"train_{round(fraction * 100)}.jsonl"
        write_jsonl(part_file, [s.to_dict() for s in part])
        result = run(finetune_config(opts, part_file, out / f"curve-{round(fraction * 100)}", plan.steps[fraction],
                                     evaluation=eval_settings(opts, test_file, [], False)),
                     events=Events(*listeners))
        curve.append(curve_point(fraction, len(part), result.train.steps, result.eval_report))
    curve.append(curve_point(1.0, len(train), full.train.steps, quality))

    lap("learning_curve")

    # 5. Serving cost: one request at a time per system.
    say.message(f"decide: timing {min(opts.latency_requests, len(test))} requests per system, one at a time")
    serving = measure_systems(opts, quality, train, test, full.train.output_dir, baselines)
    lap("serving_cost")

    # 6. The teacher, when given: the same prompts and metrics, answered by the stronger model.
    scored = None
    if teacher is not None:
        say.message(f"decide: the teacher {teacher.name} answers {len(test)} test requests zero-shot and few-shot")
        scored = score_teacher(teacher, test, split_samples(train, VAL_SPLIT, opts.seed)[0],
                               EvalConfig(**eval_settings(opts, test_file, baselines, True)), metrics=opts.metrics,
                               max_new_tokens=quality["generation"]["max_new_tokens"],
                               latency_requests=opts.latency_requests, seed=opts.seed,
                               priced=opts.teacher_token_prices is not None)
        lap("teacher")

    report = assemble(opts, quality, training, serving, curve, plan, train, test)
    if teacher is not None:
        add_teacher(report, scored, teacher)
    report["wall_s"] = {"total": time.perf_counter() - started, **phases}
    write_decide_report(out, report)
    return report


def add_teacher(report: dict, scored: dict[str, dict], teacher) -> None:
    """The teacher systems into report["systems"], and report["teacher"]: who it was, what it cost in
    tokens, and how its best system compares with the fine-tune."""
    from tunesmith.decide.teacher import report_entries, teacher_verdict
    from tunesmith.synth.teacher import usage_dict

    report["systems"].update(report_entries(scored, report["metric"], teacher.name))
    report["teacher"] = {"model": teacher.name, **teacher_verdict(report["systems"], report["metric"], report["higher_is_better"]),
                         "quality": {name: s["quality"] for name, s in scored.items()},
                         "usage": {stage: usage_dict(u) for stage, u in teacher.usage.items()}}


def curve_point(fraction: float, examples: int, steps: int, report: dict) -> dict:
    metric = report["primary_metric"]
    tuned = report["systems"]["tuned"]
    return {"fraction": fraction, "examples": examples, "steps": steps, "quality": tuned[metric],
            "quality_ci95": tuned[metric + "_ci95"]}


def measure_systems(opts: DecideOptions, quality: dict, train: list[Sample], test: list[Sample], adapter: Path,
                    baselines: list[str]) -> dict[str, dict]:
    from tunesmith.config import EvalConfig
    from tunesmith.decide.measure import measure_requests
    from tunesmith.eval.runner import build_systems
    from tunesmith.eval.systems import conversations
    from tunesmith.methods import load_trained
    from tunesmith.models import load_model, load_tokenizer, resolve_base
    from tunesmith.pipeline import split_samples
    from tunesmith.train.trainer import resolve_precision

    resolved = resolve_base(opts.model)
    tokenizer = load_tokenizer(resolved)
    base = load_model(resolved).eval()
    # Served merged, as a deployed LoRA is: the fine-tune then costs what the base model costs per token.
    tuned = load_trained(load_model(resolved), adapter).merge_and_unload().eval()
    # PEFT leaves the merged weights frozen; bf16 autocast caches its weight casts only for tensors that
    # require grad, so a frozen model re-casts every weight at every decoded token (~1.7x the CPU time of
    # the freshly loaded base, measured). Same state as the base: the same cost per token.
    tuned.requires_grad_(True)
    # The pool the evaluation drew demonstrations from: train less the run's validation split.
    pool = split_samples(train, VAL_SPLIT, opts.seed)[0]
    cfg = EvalConfig(**eval_settings(opts, Path("test.jsonl"), baselines, True))
    requests = test[: opts.latency_requests]
    budget = quality["generation"]["max_new_tokens"]
    out = {}
    for spec in build_systems(tuned, baselines, base_model=base):
        with spec.active():
            out[spec.name] = measure_requests(spec.model, tokenizer, conversations(spec, requests, pool, cfg),
                                              max_new_tokens=budget, precision=resolve_precision("auto"))
    return out


def leakage(train: list[Sample], test: list[Sample]) -> dict:
    """Test examples with a near-duplicate in train (MinHash, data/dedup.py's settings)."""
    from tunesmith.data.dedup import NearDupIndex, NearDupParams

    params = NearDupParams()
    index = NearDupIndex(params)
    index.find_duplicates(index.signatures(train))
    hits = [s.id or s.source for s, sig in zip(test, index.signatures(test)) if index.match(sig) is not None]
    return {"near_duplicates": len(hits), "test_examples": len(test), "examples": hits[:10],
            "threshold": params.threshold, "ngram": params.ngram, "flagged": bool(hits)}


def assemble(opts: DecideOptions, quality: dict, training: dict, serving: dict, curve: list[dict], plan,
             train: list[Sample], test: list[Sample]) -> dict:
    from tunesmith.decide.measure import money_per_request
    from tunesmith.decide.recommend import break_even, display_name, recommend
    from tunesmith.train.trainer import cpu_has_bf16

    metric = quality["primary_metric"]
    higher = metric not in quality.get("lower_is_better", [])
    comparison = quality["comparison"]
    rec = recommend(quality["systems"], metric, higher, comparison)
    training_money = None
    if opts.price_per_cpu_hour or opts.price_per_1k_training_tokens:
        training_money = (training["cpu_s"] * opts.price_per_cpu_hour / 3600
                          + training["tokens"] / 1000 * opts.price_per_1k_training_tokens)
    systems = {}
    for name, entry in quality["systems"].items():
        m = serving[name]
        money = money_per_request(m, opts.token_prices, opts.price_per_cpu_hour)
        systems[name] = {
            "label": display_name(name), "quality": entry[metric], "quality_ci95": entry[metric + "_ci95"],
            **{k: v for k, v in m.items() if k != "cpu_s_per_request"},
            "prompt_tokens_added": quality["prompt_tokens"][name]["added_mean"],
            "money_per_1k_requests": None if money is None else 1000 * money,
            "one_time_cpu_s": training["cpu_s"] if name == "tuned" else 0.0,
            "one_time_money": (training_money or 0.0) if name == "tuned" else 0.0,
        }
    best = comparison["baseline"]
    per_request = {n: serving[n]["cpu_s_per_request"] for n in serving}
    breakeven = {"against": best, "requests_cpu": break_even(training["cpu_s"], per_request[best], per_request["tuned"])}
    if training_money is not None and systems[best]["money_per_1k_requests"] is not None:
        breakeven["requests_money"] = break_even(training_money, systems[best]["money_per_1k_requests"] / 1000,
                                                 systems["tuned"]["money_per_1k_requests"] / 1000)
    pitfalls = {"overfitting": quality.get("overfitting"), "forgetting": quality.get("regression"),
                "leakage": leakage(train, test),
                "data_size": {"train_examples": len(train), "flagged": len(train) < 100},
                "test_size": {"test_examples": len(test), "flagged": len(test) < MIN_TEST}}
    return {
        "title": "should this task be fine-tuned?", "metric": metric, "higher_is_better": higher,
        "n_test": len(test), "n_train": len(train), "model": opts.model,
        "recommendation": rec.as_dict(), "systems": systems, "comparison": comparison,
        "training": {**training, "money": training_money, "plan": plan.as_dict()},
        "break_even": breakeven, "learning_curve": curve, "pitfalls": pitfalls,
        "prices": {"per_1k_tokens": opts.price_per_1k_tokens, "per_1k_training_tokens": opts.price_per_1k_training_tokens,
                   "per_cpu_hour": opts.price_per_cpu_hour},
        "machine": {"cpu": "AVX-512 bf16" if cpu_has_bf16() else "AVX2 only (no native bf16)"},
        "options": opts.model_dump(),
    }
