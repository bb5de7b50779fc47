"""Optional lm-evaluation-harness regression: its tasks on base and tuned, with the difference's standard error.

Runs only when the `lm_eval` package is importable and the tasks' data is already in the local
datasets cache (nothing is downloaded: HF_DATASETS_OFFLINE is set for the call). Otherwise the
report records why it was skipped, and nothing else changes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os


def available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


@contextlib.contextmanager
def _offline():
    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _evaluate(model_args: dict, tasks: list[str], limit: int, seed: int) -> dict:
    import lm_eval

    if isinstance(model_args.get("pretrained"), str):
        args = ",".join(f"{k}={v}" for k, v in model_args.items())
    else:
        # An in-memory model (the run's own, adapter switched on or off by the caller).
        from lm_eval.models.huggingface import HFLM

        args = HFLM(pretrained=model_args["pretrained"], tokenizer=model_args["tokenizer"])
    with _offline():
        out = lm_eval.simple_evaluate(model="hf" if isinstance(args, str) else args,
                                      model_args=args if isinstance(args, str) else None, tasks=tasks,
                                      limit=limit or None, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed)
    return out["results"]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare(base: dict, tuned: dict) -> dict:
    """Per task and metric: base, tuned, tuned - base and its standard error sqrt(se_b^2 + se_t^2)."""
    table: dict = {}
    for task, metrics in base.items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr" in key or key == "alias":
                continue
            name, _, filt = key.partition(",")
            se_key = f"{name}_stderr,{filt}" if filt else f"{name}_stderr"
            t = tuned.get(task, {}).get(key)
            if not isinstance(t, (int, float)):
                continue
            se_b, se_t = metrics.get(se_key), tuned[task].get(se_key)
            # lm-eval writes "N/A" where it has no standard error.
            se = math.sqrt(se_b ** 2 + se_t ** 2) if _number(se_b) and _number(se_t) else None
            table.setdefault(task, {})[key] = {"base": value, "tuned": t, "difference": t - value, "stderr": se}
    return table


def run(tasks: list[str], *, base_args: dict, tuned_args: dict, limit: int = 0, seed: int = 0,
        base_context=contextlib.nullcontext) -> dict:
    """Evaluate both systems; `base_context` switches the adapter off for an in-memory base."""
    if not available():
        return {"skipped": "lm-evaluation-harness is not installed (pip install lm-eval)"}
    try:
        with base_context():
            base = _evaluate(base_args, tasks, limit, seed)
        tuned = _evaluate(tuned_args, tasks, limit, seed)
    except Exception as exc:  # missing task data offline, unknown task name ...: report, do not fail the eval
        return {"skipped": f"lm-evaluation-harness failed: {type(exc).__name__}: {exc}"}
    return {"tasks": tasks, "limit": limit, "results": compare(base, tuned)}
