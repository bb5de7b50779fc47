"""Score systems on held-out data and write the report.

The systems are the base model zero-shot, the base model few-shot (k examples drawn from train,
seeded per example), the fine-tuned model and, with `compare_to`, one more model or adapter. For an
adapter the base systems run on the same weights with the adapter switched off, so one copy of the
model serves them all.

Every reported number is a *column*: a fold over per-example rows (see metrics.py), so each gets
a bootstrap or Wilson interval and every comparison is a paired bootstrap on the same examples.
Task metrics, perplexity and pass@k are columns; the judge, the forgetting check and
lm-evaluation-harness are sections of their own.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.errors import ConfigError, DataError
from tunesmith.eval import stats
from tunesmith.eval.metrics import METRICS, check_metrics
from tunesmith.eval.perplexity import fold_perplexity, sample_items, sequence_nll
from tunesmith.eval.report import write_report
from tunesmith.generation import generate

SYSTEM_NAMES = {"zero-shot": "base_zero_shot", "few-shot": "base_few_shot", "tuned": "tuned"}


@dataclass
class SystemSpec:
    name: str
    model: object
    adapter_off: bool = False
    shots: int = 0

    def active(self):
        """Context in which `model` behaves as this system (the adapter off for base systems)."""
        return self.model.disable_adapter() if self.adapter_off else contextlib.nullcontext()


@dataclass
class Column:
    name: str
    fold: Callable[[list], float]
    per_example: bool
    higher_is_better: bool = True
    details: Callable[[list], dict] | None = None


def metric_column(name: str) -> Column:
    m = METRICS[name]
    return Column(name, m.fold, m.per_example, True, m.details)


PPL_COLUMNS = {"perplexity": "all tokens of the raw-text examples",
               "response_perplexity": "assistant tokens of the chat examples"}


@dataclass
class EvalResult:
    report: dict
    predictions: dict[str, list[str]] = field(default_factory=dict)


def few_shot_messages(sample: Sample, pool: list[Sample], k: int, rng: random.Random) -> list[dict]:
    candidates = [s for s in pool if s.kind == "chat" and s is not sample]
    shots = rng.sample(candidates, min(k, len(candidates)))
    prompt = sample.prompt_messages()
    system = [m for m in prompt if m["role"] == "system"]
    turns: list[dict] = []
    for shot in shots:
        turns += [m for m in shot.messages if m["role"] != "system"]
    return system + turns + [m for m in prompt if m["role"] != "system"]


def build_systems(tuned_model, baselines: list[str], base_model=None, few_shot_k: int = 3) -> list[SystemSpec]:
    has_adapter = hasattr(tuned_model, "disable_adapter")
    base = base_model if base_model is not None else tuned_model
    if base_model is None and not has_adapter and baselines:
        raise ValueError("baselines need the base model when the tuned model is not an adapter")
    out = []
    for b in baselines:
        if b not in ("zero-shot", "few-shot"):
            raise ConfigError(f"eval.baselines: unknown baseline '{b}'", hint="use zero-shot and/or few-shot")
        out.append(SystemSpec(SYSTEM_NAMES[b], base, adapter_off=base is tuned_model,
                              shots=few_shot_k if b == "few-shot" else 0))
    if tuned_model is not None:
        out.append(SystemSpec("tuned", tuned_model))
    return out


def _base_path_of(model) -> str | None:
    """Where the tuned model's base weights came from (peft and transformers both record it)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        path = next(iter(peft_config.values())).base_model_name_or_path
        if path:
            return path
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None


def load_compare_system(value: str, tuned_model=None) -> SystemSpec:
    """`compare_to` as a system: an adapter folder (on its recorded base) or any model model.base accepts."""
    from tunesmith.models import load_model, resolve_base

    path = Path(value)
    peft_cfg, meta = path / "adapter_config.json", path / "tunesmith.json"
    if peft_cfg.is_file() or (meta.is_file() and not (path / "config.json").is_file()):
        from tunesmith.methods import load_trained

        recorded = json.loads(peft_cfg.read_text()).get("base_model_name_or_path") if peft_cfg.is_file() else None
        base = json.loads(meta.read_text()).get("base") if meta.is_file() else None
        base = (_base_path_of(tuned_model) if tuned_model is not None else None) or recorded or base
        if not base:
            raise ConfigError(f"eval.compare_to: adapter {path} does not record its base model",
                              hint="compare with a merged model folder instead")
        # PEFT layout or one of tunesmith's own adapter formats, like `tunesmith eval --adapter`.
        return SystemSpec("compare", load_trained(load_model(resolve_base(base)), path).eval())
    return SystemSpec("compare", load_model(resolve_base(value)).eval())


def _base_for_regression(systems: list[SystemSpec]) -> SystemSpec | None:
    tuned = next((s for s in systems if s.name == "tuned"), None)
    base = next((s for s in systems if s.name.startswith("base_")), None)
    if base is not None:
        return SystemSpec("base", base.model, adapter_off=base.adapter_off)
    if tuned is not None and hasattr(tuned.model, "disable_adapter"):
        return SystemSpec("base", tuned.model, adapter_off=True)
    return None


def validate(cfg: EvalConfig) -> None:
    """Every check that needs no model: run it before loading or generating anything."""
    check_metrics(cfg.metrics)
    if cfg.judge:
        from tunesmith.eval.judge import check_judge, load_prompt

        check_judge(cfg.judge)
        load_prompt(cfg.judge_prompt)
    if cfg.ppl_stride > cfg.ppl_window:
        raise ConfigError(f"eval.ppl_stride ({cfg.ppl_stride}) is larger than eval.ppl_window ({cfg.ppl_window})",
                          hint="a stride past the window would skip tokens; use ppl_stride <= ppl_window")
    if cfg.code_tasks:
        too_big = [k for k in cfg.pass_k if k > cfg.code_samples or k < 1]
        if too_big:
            raise ConfigError(f"eval.pass_k: {too_big} not in 1..code_samples ({cfg.code_samples})",
                              hint="sample at least k programs per task: raise eval.code_samples")
        if max(cfg.pass_k) > 1 and cfg.temperature == 0 and cfg.code_samples > 1:
            raise ConfigError("eval.pass_k > 1 with greedy decoding: every sample would be the same program",
                              hint="set eval.temperature (e.g. 0.8) for pass@k with k > 1")


def run_eval(systems: list[SystemSpec], tokenizer, samples: list[Sample], cfg: EvalConfig, out_dir: Path, *,
             train_pool: list[Sample] | None = None, system_prompt: str | None = None, precision: str = "fp32",
             training: dict | None = None, show_progress: bool = True, title: str = "evaluation",
             lm_eval_args: dict | None = None, train_log: Path | None = None, events=None) -> EvalResult:
    """Score `systems` and write the report to `out_dir`. With `training`, the overfitting check reads
    `train_log` (default: out_dir/metrics.jsonl, where a training run writes it)."""
    if events is not None:  # interim (h3 branch): bars while a progress display listens; h4's run_eval replaces this
        show_progress = any(getattr(listener, "progress", False) for listener in events.listeners)
    validate(cfg)
    chat = [s for s in samples if s.kind == "chat"]
    texts = [s for s in samples if s.kind == "text"]
    if cfg.max_examples:
        chat, texts = chat[: cfg.max_examples], texts[: cfg.max_examples]
    tasks = None
    if cfg.code_tasks:
        from tunesmith.eval.passk import load_code_tasks

        tasks = load_code_tasks(cfg.code_tasks)[: cfg.max_examples or None]
    if not chat and not texts and not tasks:
        raise DataError("nothing to evaluate: no chat or text examples in the eval data",
                        hint="pass a file of conversations (or raw text for perplexity), or eval.code_tasks")
    judge = prompt = None
    if cfg.judge:
        from tunesmith.eval.judge import load_prompt, make_judge

        prompt = load_prompt(cfg.judge_prompt)
        judge = make_judge(cfg.judge, cfg.judge_url)
    if cfg.compare_to and not any(s.name == "compare" for s in systems):
        tuned = next((s.model for s in systems if s.name == "tuned"), None)
        systems = [*systems, load_compare_system(cfg.compare_to, tuned)]

    references = [s.reference() for s in chat]
    columns: dict[str, Column] = {}
    rows: dict[str, dict[str, list]] = {}
    predictions: dict[str, list[str]] = {}
    prompts: dict[str, list[list[dict]]] = {}
    completions: dict[str, list[list[str]]] = {}
    gen_total = (len(chat) if cfg.metrics else 0) + (len(tasks) * cfg.code_samples if tasks else 0)
    with _progress(show_progress, gen_total * len(systems)) as advance:
        for spec in systems:
            rows[spec.name] = {}
            with spec.active():
                if chat and cfg.metrics:
                    convs = _conversations(spec, chat, train_pool, cfg)
                    predictions[spec.name] = _generate(spec.model, tokenizer, convs, cfg, system_prompt, precision,
                                                       advance(spec.name))
                    prompts[spec.name] = convs
                if cfg.perplexity:
                    for col, subset in (("response_perplexity", chat), ("perplexity", texts)):
                        if subset:
                            # The few-shot system is the base model: its perplexity is zero-shot's.
                            if spec.shots and "base_zero_shot" in rows:
                                rows[spec.name][col] = rows["base_zero_shot"][col]
                                continue
                            items = sample_items(tokenizer, subset, system_prompt)
                            rows[spec.name][col] = sequence_nll(spec.model, items, window=cfg.ppl_window,
                                                                stride=cfg.ppl_stride, batch_size=max(1, cfg.batch_size // 4),
                                                                precision=precision)
                            columns[col] = Column(col, fold_perplexity, False, higher_is_better=False)
                if tasks:
                    convs = [t.messages() for t in tasks for _ in range(cfg.code_samples)]
                    flat = _generate(spec.model, tokenizer, convs, cfg, system_prompt, precision, advance(spec.name))
                    completions[spec.name] = [flat[i:i + cfg.code_samples] for i in range(0, len(flat), cfg.code_samples)]
    for name, preds in predictions.items():
        for m in cfg.metrics:
            rows[name][m] = METRICS[m].rows(preds, references)
            columns[m] = metric_column(m)
    code_results = {}
    if tasks:
        from tunesmith.eval.passk import pass_at_k, score_tasks
        from tunesmith.eval.sandbox import SandboxLimits

        limits = SandboxLimits(timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb)
        for name, comps in completions.items():
            _, results = score_tasks(tasks, comps, cfg.pass_k, limits, workers=cfg.code_workers)
            code_results[name] = results
            for k in cfg.pass_k:
                rows[name][f"pass@{k}"] = [pass_at_k(r.n, r.passed, k) for r in results]
                columns[f"pass@{k}"] = Column(f"pass@{k}", stats.mean, True)
    # Task metrics first (the first of them is the primary), then perplexity, then pass@k.
    order = [m for m in cfg.metrics if m in columns] + [c for c in columns if c not in cfg.metrics]
    columns = {c: columns[c] for c in order}
    log_rows = read_train_log(train_log or Path(out_dir) / "metrics.jsonl") if training is not None else None
    report = build_report(rows, columns, cfg, n=len(chat), training=training, precision=precision, title=title,
                          baseline=baseline_weights(systems), train_log=log_rows)
    report["n_text_examples"] = len(texts)
    if tasks:
        report["code"] = {"tasks": len(tasks), "samples_per_task": cfg.code_samples, "k": cfg.pass_k,
                          "limits": {"timeout_s": cfg.code_timeout_s, "memory_mb": cfg.code_memory_mb},
                          "isolation": _isolation()}

    judge_rows = {}
    if judge is not None and "tuned" in predictions:
        from tunesmith.eval.judge import pairwise, summarize

        against = report.get("comparison", {}).get("baseline") or next((n for n in predictions if n != "tuned"), None)
        if against is not None:
            questions = [_last_user(s) for s in chat]
            verdicts = pairwise(judge, questions, predictions["tuned"], predictions[against], references, prompt)
            report["judge"] = {"judge": judge.name, "baseline": against, "prompt_file": str(cfg.judge_prompt or "shipped"),
                               **summarize(verdicts, seed=cfg.seed)}
            judge_rows = {i: v for i, v in enumerate(verdicts)}

    if cfg.regression:
        report["regression"] = _regression(systems, tokenizer, cfg, system_prompt, precision)
    if cfg.lm_eval_tasks:
        report["lm_eval"] = _lm_eval(systems, tokenizer, cfg, lm_eval_args)

    out_rows = []
    for name in predictions:
        for i, s in enumerate(chat):
            row = {"system": name, "id": s.id or s.source, "prompt": prompts[name][i],
                   "prediction": predictions[name][i], "reference": references[i],
                   "scores": {m: rows[name][m][i] for m in cfg.metrics if columns[m].per_example}}
            if name == "tuned" and i in judge_rows:
                v = judge_rows[i]
                row["judge"] = {"against": report["judge"]["baseline"], "tuned_first": v.first, "tuned_second": v.second,
                                "outcome": v.outcome}
            out_rows.append(row)
    for name, results in code_results.items():
        for task, comps, res in zip(tasks, completions[name], results):
            for j, comp in enumerate(comps):
                out_rows.append({"system": name, "id": f"{task.id}#{j}", "prompt": task.messages(), "prediction": comp,
                                 "reference": task.test, "passed": res.statuses[j] == "passed", "status": res.statuses[j]})
    write_report(out_dir, report, out_rows)
    return EvalResult(report, predictions)


def _conversations(spec: SystemSpec, chat: list[Sample], pool, cfg: EvalConfig) -> list[list[dict]]:
    if spec.shots:
        return [few_shot_messages(s, pool or [], spec.shots, random.Random(cfg.seed * 100003 + i))
                for i, s in enumerate(chat)]
    return [s.prompt_messages() for s in chat]


def _generate(model, tokenizer, convs, cfg: EvalConfig, system_prompt, precision, progress) -> list[str]:
    return generate(model, tokenizer, convs, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, system_prompt=system_prompt,
                    precision=precision, progress=progress)


def _last_user(sample: Sample) -> str:
    users = [m["content"] for m in sample.prompt_messages() if m["role"] == "user"]
    return users[-1] if users else ""


def _isolation() -> list[str]:
    from tunesmith.eval.sandbox import isolation_layers

    return isolation_layers()


def _quantized_bits(model) -> int | None:
    """4 or 8 when linear layers hold bitsandbytes weights (a QLoRA base), else None."""
    for module in model.modules():
        kind = type(getattr(module, "weight", None)).__name__
        if kind == "Params4bit":
            return 4
        if kind == "Int8Params":
            return 8
    return None


def baseline_weights(systems: list[SystemSpec]) -> dict | None:
    """What the base systems ran on, so a QLoRA report does not pass its 4-bit base off as the original."""
    base = next((s for s in systems if s.name.startswith("base_")), None)
    if base is None:
        return None
    bits = _quantized_bits(base.model)
    if base.adapter_off and bits:
        note = (f"the {bits}-bit quantized base the adapter was trained on, with the adapter switched off; "
                "not the full-precision base model, which may score differently")
    elif base.adapter_off:
        note = "the tuned model's own base weights with the adapter switched off"
    else:
        note = "a separately loaded base model" + (f" ({bits}-bit quantized)" if bits else "")
    return {"source": "adapter_off" if base.adapter_off else "separate", "quantized_bits": bits, "note": note}


def read_train_log(path: Path) -> list[dict]:
    """metrics.jsonl rows; a damaged line (a run killed mid-write) is skipped, a missing file is []."""
    from tunesmith.train.logbook import read_metrics

    return read_metrics(path, skip_damaged=True)


def overfitting_check(log_rows: list[dict], threshold: float) -> dict:
    """Validation minus train loss at the latest step that logged both.

    Both losses come from the same step: the final train loss against the best validation loss
    would compare two different models, and early stopping makes them many steps apart.
    """
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    row = next((r for r in reversed(log_rows) if number(r.get("val_loss")) and number(r.get("loss"))), None)
    if row is None:
        return {"skipped": "no step in metrics.jsonl has both a train and a validation loss "
                           "(validation needs data.val or data.val_split)"}
    gap = row["val_loss"] - row["loss"]
    return {"step": row.get("step"), "train_loss": row["loss"], "val_loss": row["val_loss"], "gap": gap,
            "flagged": gap > threshold, "threshold": threshold}


def _regression(systems, tokenizer, cfg: EvalConfig, system_prompt, precision) -> dict:
    from tunesmith.eval import regression

    tuned = next((s for s in systems if s.name == "tuned"), None)
    base = _base_for_regression(systems)
    if tuned is None or base is None:
        return {"skipped": "needs both the base and the tuned model"}
    scored = {}
    for spec in (base, tuned):
        with spec.active():
            scored[spec.name] = regression.score_system(spec.model, tokenizer, cfg, system_prompt=system_prompt,
                                                        precision=precision)
    return regression.compare(scored["base"], scored["tuned"], cfg)


def _lm_eval(systems, tokenizer, cfg: EvalConfig, paths: dict | None) -> dict:
    from tunesmith.eval import lm_harness

    tuned = next((s for s in systems if s.name == "tuned"), None)
    base = _base_for_regression(systems)
    if tuned is None or base is None:
        return {"skipped": "needs both the base and the tuned model"}
    if paths:  # from the CLI: the base folder, and the adapter through lm-eval's own peft= argument
        base_args = {"pretrained": paths["base"]}
        tuned_args = {"pretrained": paths["base"], **({"peft": paths["adapter"]} if paths.get("adapter") else {})}
        return lm_harness.run(cfg.lm_eval_tasks, base_args=base_args, tuned_args=tuned_args,
                              limit=cfg.lm_eval_limit, seed=cfg.seed)
    return lm_harness.run(cfg.lm_eval_tasks, base_args={"pretrained": base.model, "tokenizer": tokenizer},
                          tuned_args={"pretrained": tuned.model, "tokenizer": tokenizer}, limit=cfg.lm_eval_limit,
                          seed=cfg.seed, base_context=base.active)


def _compare(rows_a: list, rows_b: list, col: Column, seed: int) -> tuple[float, tuple[float, float]]:
    if col.per_example:
        return stats.paired_difference(rows_a, rows_b, seed=seed)
    return stats.paired_fold_difference(rows_a, rows_b, col.fold, seed=seed)


def _comparison_entry(rows, systems, col: Column, candidate: str, other: str, n: int, seed: int,
                      label: str | None = None) -> dict:
    diff, ci = _compare(rows[candidate][col.name], rows[other][col.name], col, seed)
    better = ci[0] > 0 if col.higher_is_better else ci[1] < 0
    worse = ci[1] < 0 if col.higher_is_better else ci[0] > 0
    word = "beats" if better else "loses to" if worse else "is not distinguishable from"
    a, b = systems[candidate][col.name], systems[other][col.name]
    sentence = (f"{candidate} {word} {label or other} on {col.name}: {a:.3f} vs {b:.3f}, difference {diff:+.3f} "
                f"(95% CI {ci[0]:+.3f} to {ci[1]:+.3f}, n={n})")
    return {"system": candidate, "baseline": other, "metric": col.name, "difference": diff,
            "difference_ci95": list(ci), "result": word, "sentence": sentence}


def build_report(rows: dict[str, dict[str, list]], columns: dict[str, Column], cfg: EvalConfig, n: int,
                 training: dict | None, precision: str, title: str, baseline: dict | None = None,
                 train_log: list[dict] | None = None) -> dict:
    primary = next(iter(columns), None)
    systems: dict[str, dict] = {}
    details: dict[str, dict] = {}
    for name, per_col in rows.items():
        entry = {}
        for col_name, col in columns.items():
            values = per_col.get(col_name)
            if values is None:
                continue
            entry[col_name] = col.fold(values)
            if col.per_example:
                entry[f"{col_name}_ci95"] = list(stats.interval(values, seed=cfg.seed))
            else:
                entry[f"{col_name}_ci95"] = list(stats.bootstrap_fold(values, col.fold, seed=cfg.seed))
            if col.details is not None:
                details.setdefault(name, {})[col_name] = col.details(values)
        systems[name] = entry
    report: dict = {
        "title": title, "n_examples": n, "primary_metric": primary, "metrics": list(columns), "systems": systems,
        "lower_is_better": [c for c, col in columns.items() if not col.higher_is_better],
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                       "seed": cfg.seed, "batch_size": cfg.batch_size, "few_shot_k": cfg.few_shot_k,
                       "decoding": "greedy" if cfg.temperature == 0 else "sampling", "precision": precision,
                       "padding": "left"},
    }
    if baseline is not None:
        report["baseline_weights"] = baseline
    if any(c in columns for c in PPL_COLUMNS):
        report["perplexity"] = {"window": cfg.ppl_window, "stride": cfg.ppl_stride,
                                "scored": {c: d for c, d in PPL_COLUMNS.items() if c in columns}}
    if details:
        report["details"] = details
    if primary is not None:
        col = columns[primary]
        have = [s for s in systems if primary in systems[s]]
        baselines = [s for s in have if s.startswith("base_")]
        comparisons = []
        if "tuned" in have and baselines:
            pick = max if col.higher_is_better else min
            best = pick(baselines, key=lambda s: systems[s][primary])
            comparisons.append(_comparison_entry(rows, systems, col, "tuned", best, n, cfg.seed,
                                                 label=f"the best baseline ({best})"))
            report["comparison"] = comparisons[0]
        if "tuned" in have and "compare" in have:
            comparisons.append(_comparison_entry(rows, systems, col, "tuned", "compare", n, cfg.seed))
        if comparisons:
            report["comparisons"] = comparisons
            report["verdict"] = "; ".join(c["sentence"] for c in comparisons)
        elif len(have) > 1:
            ranked = sorted(have, key=lambda s: systems[s][primary], reverse=col.higher_is_better)
            report["verdict"] = f"best on {primary}: {ranked[0]} ({systems[ranked[0]][primary]:.3f})"
    if training:
        report["training"] = training
        report["overfitting"] = overfitting_check(train_log or [], cfg.overfit_gap)
    return report


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    if not enabled or total == 0:
        yield lambda name: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    task = bar.add_task("", total=total)
    with bar:
        def advance(name):
            bar.update(task, description=name)
            return lambda k: bar.advance(task, k)
        yield advance
