"""Task metrics, one registry for per-example and corpus-level scores.

Every metric turns (predictions, references) into one *row* per example and folds any list of rows
into the system's value. For per-example metrics (exact match, ROUGE F1 ...) a row is the example's
score and the fold is the mean. For corpus metrics a mean of per-example scores would be wrong:
BLEU sums n-gram counts over the corpus before taking precisions, macro-F1 needs the whole
confusion matrix. Their rows are sufficient statistics and the fold is the real corpus formula.
Keeping rows separate from the fold is what lets the report bootstrap any metric by resampling
rows, and compare two systems with a paired bootstrap on the same resampled examples.
"""

from __future__ import annotations

import importlib
import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from tunesmith.errors import ConfigError


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    rows: Callable[[list[str], list[str]], list]      # one row per (prediction, reference)
    fold: Callable[[list], float]                      # system value from any list of rows
    per_example: bool                                  # rows are scores and fold is their mean
    details: Callable[[list], dict] | None = None      # extra corpus-level facts (per-class table, signature)
    scale: float = 1.0                                 # values lie in [0, scale] (BLEU is 0-100, as sacrebleu reports it)
    requires: str | None = None                        # module of an optional extra it imports when scoring


METRICS: dict[str, Metric] = {}
DESCRIPTIONS: dict[str, str] = {}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _register(m: Metric) -> Metric:
    METRICS[m.name] = m
    DESCRIPTIONS[m.name] = m.description
    return m


def metric(name: str, description: str, requires: str | None = None):
    """Register a per-example metric `fn(prediction, reference) -> score`."""
    def wrap(fn):
        _register(Metric(name, description, rows=lambda ps, rs: [fn(p, r) for p, r in zip(ps, rs)],
                         fold=_mean, per_example=True, requires=requires))
        return fn
    return wrap


def corpus_metric(name: str, description: str, *, fold: Callable[[list], float],
                  details: Callable[[list], dict] | None = None, scale: float = 1.0, requires: str | None = None):
    """Register a corpus metric from its row function `fn(predictions, references) -> rows`."""
    def wrap(fn):
        _register(Metric(name, description, rows=fn, fold=fold, per_example=False, details=details, scale=scale,
                         requires=requires))
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


@metric("exact_match_casefold", "exact match ignoring case and surrounding/inner whitespace runs (punctuation kept)")
def exact_match_casefold(pred: str, ref: str) -> float:
    return float(" ".join(pred.casefold().split()) == " ".join(ref.casefold().split()))


@metric("contains_norm", "the normalised reference appears as whole words in the normalised prediction (short-answer QA)")
def contains_norm(pred: str, ref: str) -> float:
    p, r = normalize_text(pred), normalize_text(ref)
    return float(bool(r) and f" {r} " in f" {p} ")


_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def sentence_count(text: str) -> int:
    """Sentences in a plain-text answer: runs of . ! ? followed by a space or the end, plus an unended tail."""
    text = text.strip()
    if not text:
        return 0
    ends = list(_SENTENCE_END.finditer(text))
    tail = text[ends[-1].end():].strip() if ends else text
    return len(ends) + (1 if tail else 0)


@metric("one_sentence", "the prediction is exactly one sentence (a style statistic; the reference is not used)")
def one_sentence(pred: str, ref: str) -> float:
    return float(sentence_count(pred) == 1)


@metric("words", "words in the prediction (a length statistic, not a score: lower is shorter; the reference is not used)")
def words(pred: str, ref: str) -> float:
    return float(len(pred.split()))


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


@metric("json_field_f1", "F1 over top-level (key, value) pairs of the predicted and reference JSON objects; "
                         "a nested value must match whole")
def json_field_f1(pred: str, ref: str) -> float:
    """Top-level fields only: a nested object or list is one field, right only if equal as a whole
    (key order ignored). Two empty objects agree (1.0); anything but an object on either side is 0."""
    p, r = parse_json(pred), parse_json(ref)
    if not isinstance(r, dict) or not isinstance(p, dict):
        return 0.0
    if not p and not r:
        return 1.0
    pp = {(k, json.dumps(v, sort_keys=True)) for k, v in p.items()}
    rr = {(k, json.dumps(v, sort_keys=True)) for k, v in r.items()}
    hit = len(pp & rr)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(pp), hit / len(rr)
    return 2 * precision * recall / (precision + recall)


def _list_fields(value) -> Counter | None:
    """(position, key, value) of every field of a JSON list of objects, as a multiset; None when
    `value` is not a list. A list item that is not an object is one field of its own."""
    if not isinstance(value, list):
        return None
    fields = Counter()
    for i, item in enumerate(value):
        if isinstance(item, dict):
            fields.update((i, k, json.dumps(v, sort_keys=True)) for k, v in item.items())
        else:
            fields[(i, None, json.dumps(item, sort_keys=True))] += 1
    return fields


@metric("json_list_f1", "F1 over the (position, key, value) fields of the predicted and reference JSON lists of "
                        "objects: a record missed or added early shifts the rest and costs their fields")
def json_list_f1(pred: str, ref: str) -> float:
    """Records are matched by position, as a schedule or a table is read: the k-th object of the
    prediction against the k-th of the reference. A prediction that is not a parseable list (cut
    off, looping to the end of the budget, prose) scores 0; two empty lists agree (1.0)."""
    p, r = _list_fields(parse_json(pred)), _list_fields(parse_json(ref))
    if p is None or r is None:
        return 0.0
    if not p and not r:
        return 1.0
    hit = sum((p & r).values())
    if hit == 0:
        return 0.0
    precision, recall = hit / sum(p.values()), hit / sum(r.values())
    return 2 * precision * recall / (precision + recall)


# --- ROUGE (rouge-score): its own corpus figure is the mean of per-example F-measures -------------

@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # Porter stemming on, as in the ROUGE-1.5.5 script most papers report.
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def _rouge(kind: str):
    def fn(pred: str, ref: str) -> float:
        return _rouge_scorer().score(ref, pred)[kind].fmeasure
    return fn


for _kind, _n in (("rouge1", "unigram"), ("rouge2", "bigram"), ("rougeL", "longest-common-subsequence")):
    metric(_kind, f"ROUGE {_n} F-measure (rouge-score, Porter stemmer), averaged over examples",
           requires="rouge_score")(_rouge(_kind))


# --- BLEU (sacrebleu): n-gram counts are summed over the corpus before the precisions -------------

@lru_cache(maxsize=1)
def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU()


def _bleu_fold(rows: list) -> float:
    if not rows:
        return float("nan")
    totals = [sum(col) for col in zip(*rows)]
    return float(_bleu()._compute_score_from_stats(totals).score)


def _bleu_details(rows: list) -> dict:
    return {"signature": _bleu().get_signature().format()}


@corpus_metric("bleu", "corpus BLEU, 0-100 (sacrebleu defaults: 13a tokenizer, exp smoothing; signature in the report)",
               fold=_bleu_fold, details=_bleu_details, scale=100.0, requires="sacrebleu")
def bleu_rows(preds: list[str], refs: list[str]) -> list:
    # Per-sentence sufficient statistics (matches and totals per n-gram order, lengths); the fold sums
    # them, which is exactly sacrebleu's corpus_score.
    return _bleu()._extract_corpus_statistics(list(preds), [list(refs)])


# --- labels: accuracy, and precision / recall / F1 per class and macro-averaged ---------------------

def label_of(text: str) -> str:
    """A class label as compared: normalised text (case, punctuation and spacing ignored)."""
    return normalize_text(text)


def label_table(rows: list) -> dict[str, dict[str, float]]:
    """Per-class precision, recall, F1 and support over the classes present in the references.

    A prediction outside the reference classes counts against recall of the true class and is not a
    class of its own: free-text models invent labels, and each invention would otherwise add a
    zero-F1 class and sink the macro average.
    """
    # One pass of counts, not one pass per class: the bootstrap refolds this a thousand times.
    refs, preds, hits = Counter(), Counter(), Counter()
    for p, r in rows:
        refs[r] += 1
        preds[p] += 1
        hits[r] += p == r
    table = {}
    for c in sorted(refs):
        tp, fp, fn = hits[c], preds[c] - hits[c], refs[c] - hits[c]
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[c] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return table


def _macro(key: str):
    def fold(rows: list) -> float:
        table = label_table(rows)
        return _mean([v[key] for v in table.values()]) if table else float("nan")
    return fold


def _label_rows(preds: list[str], refs: list[str]) -> list:
    return [(label_of(p), label_of(r)) for p, r in zip(preds, refs)]


def _label_details(rows: list) -> dict:
    return {"per_class": label_table(rows)}


@metric("accuracy", "label accuracy: normalised prediction equals the normalised reference label")
def accuracy(pred: str, ref: str) -> float:
    return float(label_of(pred) == label_of(ref))


for _key in ("precision", "recall", "f1"):
    corpus_metric(f"macro_{_key}", f"label {_key} per reference class, macro-averaged (per-class table in the report)",
                  fold=_macro(_key), details=_label_details)(_label_rows)


# Module -> what to install; both libraries come with tunesmith's `metrics` extra.
EXTRAS = {"sacrebleu": "pip install 'tunesmith[metrics]' (or pip install sacrebleu)",
          "rouge_score": "pip install 'tunesmith[metrics]' (or pip install rouge-score)"}


def importable(module: str) -> bool:
    """Whether `module` really imports (an installed but broken package counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def check_metrics(names: list[str], key: str = "eval.metrics") -> None:
    """Unknown names and metrics whose library is missing fail here, before any generation. `key` is how
    the user set them (a config key, or a command's flag), named in the error."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"{key}: unknown metric(s) {', '.join(unknown)}", hint=f"available: {', '.join(METRICS)}")
    for name in names:
        module = METRICS[name].requires
        if module and not importable(module):
            raise ConfigError(f"{key}: {name} needs the {module} package, which is not installed",
                              hint=f"{EXTRAS[module]}, or drop {name} from --metrics / eval.metrics")


def metric_rows(names: list[str], predictions: list[str], references: list[str]) -> dict[str, list]:
    check_metrics(names)
    return {n: METRICS[n].rows(predictions, references) for n in names}
