"""Score systems on held-out data and write the report.

The systems are the base model zero-shot, the base model few-shot (k examples drawn from train,
seeded per example) and the fine-tuned model. For an adapter the base systems run on the same
weights with the adapter switched off, so one copy of the model serves all three.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.eval import stats
from tunesmith.eval.generate import generate
from tunesmith.eval.metrics import check_metrics, score
from tunesmith.eval.report import write_report

SYSTEM_NAMES = {"zero-shot": "base_zero_shot", "few-shot": "base_few_shot", "tuned": "tuned"}


@dataclass
class SystemSpec:
    name: str
    model: object
    adapter_off: bool = False
    shots: int = 0


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
            from tunesmith.errors import ConfigError

            raise ConfigError(f"eval.baselines: unknown baseline '{b}'", hint="use zero-shot and/or few-shot")
        out.append(SystemSpec(SYSTEM_NAMES[b], base, adapter_off=base is tuned_model,
                              shots=few_shot_k if b == "few-shot" else 0))
    if tuned_model is not None:
        out.append(SystemSpec("tuned", tuned_model))
    return out


def run_eval(systems: list[SystemSpec], tokenizer, samples: list[Sample], cfg: EvalConfig, out_dir: Path, *,
             train_pool: list[Sample] | None = None, system_prompt: str | None = None, precision: str = "fp32",
             training: dict | None = None, show_progress: bool = True, title: str = "evaluation") -> EvalResult:
    check_metrics(cfg.metrics)
    samples = [s for s in samples if s.kind == "chat"]
    if cfg.max_examples:
        samples = samples[: cfg.max_examples]
    references = [s.reference() for s in samples]
    predictions: dict[str, list[str]] = {}
    prompts: dict[str, list[list[dict]]] = {}
    with _progress(show_progress, len(samples) * len(systems)) as advance:
        for spec in systems:
            if spec.shots:
                pool = train_pool or []
                convs = [few_shot_messages(s, pool, spec.shots, random.Random(cfg.seed * 100003 + i))
                         for i, s in enumerate(samples)]
            else:
                convs = [s.prompt_messages() for s in samples]
            ctx = spec.model.disable_adapter() if spec.adapter_off else contextlib.nullcontext()
            with ctx:
                predictions[spec.name] = generate(
                    spec.model, tokenizer, convs, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, system_prompt=system_prompt,
                    precision=precision, progress=advance(spec.name))
            prompts[spec.name] = convs
    scores = {name: score(cfg.metrics, preds, references) for name, preds in predictions.items()}
    report = build_report(scores, cfg, n=len(samples), training=training, precision=precision, title=title)
    rows = []
    for name in predictions:
        for i, s in enumerate(samples):
            rows.append({"system": name, "id": s.id or s.source, "prompt": prompts[name][i],
                         "prediction": predictions[name][i], "reference": references[i],
                         "scores": {m: scores[name][m][i] for m in cfg.metrics}})
    write_report(out_dir, report, rows)
    return EvalResult(report, predictions)


def build_report(scores: dict[str, dict[str, list[float]]], cfg: EvalConfig, n: int, training: dict | None,
                 precision: str, title: str) -> dict:
    primary = cfg.metrics[0]
    systems = {}
    for name, per_metric in scores.items():
        entry = {}
        for metric, values in per_metric.items():
            entry[metric] = stats.mean(values)
            entry[f"{metric}_ci95"] = list(stats.interval(values, seed=cfg.seed))
        systems[name] = entry
    report: dict = {
        "title": title, "n_examples": n, "primary_metric": primary, "metrics": cfg.metrics, "systems": systems,
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                       "seed": cfg.seed, "batch_size": cfg.batch_size, "few_shot_k": cfg.few_shot_k,
                       "decoding": "greedy" if cfg.temperature == 0 else "sampling", "precision": precision},
    }
    baselines = [s for s in scores if s != "tuned"]
    if "tuned" in scores and baselines:
        best = max(baselines, key=lambda s: systems[s][primary])
        diff, ci = stats.paired_difference(scores["tuned"][primary], scores[best][primary], seed=cfg.seed)
        report["comparison"] = {"baseline": best, "metric": primary, "difference": diff, "difference_ci95": list(ci)}
        t, b = systems["tuned"][primary], systems[best][primary]
        if ci[0] > 0:
            word = "beats"
        elif ci[1] < 0:
            word = "loses to"
        else:
            word = "is not distinguishable from"
        report["verdict"] = (f"tuned {word} the best baseline ({best}) on {primary}: {t:.3f} vs {b:.3f}, "
                             f"difference {diff:+.3f} (95% CI {ci[0]:+.3f} to {ci[1]:+.3f}, n={n})")
    elif len(scores) > 1:
        ranked = sorted(scores, key=lambda s: -systems[s][primary])
        report["verdict"] = f"best on {primary}: {ranked[0]} ({systems[ranked[0]][primary]:.3f})"
    if training:
        report["training"] = training
        train_loss, val_loss = training.get("final_loss"), training.get("best_val_loss")
        if train_loss is not None and val_loss is not None:
            gap = val_loss - train_loss
            report["overfitting"] = {"train_loss": train_loss, "val_loss": val_loss, "gap": gap,
                                     "flagged": gap > 0.5, "threshold": 0.5}
    return report


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    if not enabled:
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
