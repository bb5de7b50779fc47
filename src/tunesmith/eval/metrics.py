"""Task metrics. Each registers itself and scores one (prediction, reference) pair, or a whole list.

Per-example metrics return a score in [0, 1] per pair; the system score is their mean, which is
what the report compares and what the confidence intervals are computed over.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from typing import Callable

from tunesmith.errors import ConfigError

METRICS: dict[str, Callable[[str, str], float]] = {}
DESCRIPTIONS: dict[str, str] = {}


def metric(name: str, description: str):
    def wrap(fn):
        METRICS[name] = fn
        DESCRIPTIONS[name] = description
        return fn
    return wrap


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(text.split())


@metric("exact_match", "prediction equals reference after stripping surrounding whitespace")
def exact_match(pred: str, ref: str) -> float:
    return float(pred.strip() == ref.strip())


@metric("exact_match_norm", "exact match after lower-casing, removing punctuation and collapsing spaces")
def exact_match_norm(pred: str, ref: str) -> float:
    return float(normalize_text(pred) == normalize_text(ref))


_JSON_START = re.compile(r"[\[{]")


def parse_json(text: str):
    """The first JSON value in `text` (models often wrap it in prose or code fences), or None."""
    decoder = json.JSONDecoder()
    for m in _JSON_START.finditer(text):
        try:
            value, _ = decoder.raw_decode(text[m.start():])
            return value
        except json.JSONDecodeError:
            continue
    return None


@metric("json_valid", "the prediction contains a parseable JSON value")
def json_valid(pred: str, ref: str) -> float:
    return float(parse_json(pred) is not None)


@metric("json_exact", "the first JSON value in the prediction equals the reference's (key order ignored)")
def json_exact(pred: str, ref: str) -> float:
    p, r = parse_json(pred), parse_json(ref)
    return float(p is not None and p == r)


@metric("json_field_f1", "F1 over (key, value) pairs of the predicted and reference JSON objects")
def json_field_f1(pred: str, ref: str) -> float:
    p, r = parse_json(pred), parse_json(ref)
    if not isinstance(r, dict):
        return 0.0
    if not isinstance(p, dict):
        return 0.0
    pp = {(k, json.dumps(v, sort_keys=True)) for k, v in p.items()}
    rr = {(k, json.dumps(v, sort_keys=True)) for k, v in r.items()}
    hit = len(pp & rr)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(pp), hit / len(rr)
    return 2 * precision * recall / (precision + recall)


def check_metrics(names: list[str]) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown metric(s) {', '.join(unknown)}", hint=f"available: {', '.join(METRICS)}")


def score(names: list[str], predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    check_metrics(names)
    return {n: [METRICS[n](p, r) for p, r in zip(predictions, references)] for n in names}
