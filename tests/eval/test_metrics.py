"""Text metrics equal the reference libraries on fixed strings; label metrics equal hand-counted numbers."""

from __future__ import annotations

import math
import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunesmith.errors import ConfigError
from tunesmith.eval import stats
from tunesmith.eval.metrics import METRICS, check_metrics, metric_rows

HYPS = ["the cat sat on the mat", "a quick brown fox jumps over the lazy dog", "hello there general kenobi",
        "it is raining cats and dogs today", "nothing matches here at all"]
REFS = ["the cat is sitting on the mat", "the quick brown fox jumped over the lazy dog", "hello there",
        "it is raining cats and dogs", "completely different words"]


def fold(name, preds, refs):
    m = METRICS[name]
    return m.fold(m.rows(preds, refs))


def test_bleu_equals_sacrebleu_corpus_score_and_signature():
    bleu = sacrebleu.BLEU()
    ref = bleu.corpus_score(HYPS, [REFS])
    assert fold("bleu", HYPS, REFS) == pytest.approx(ref.score, abs=1e-9)
    # Corpus BLEU is not the mean of sentence BLEUs: the registry must not average per example.
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)) / len(HYPS)
    assert abs(ref.score - sentence_mean) > 1.0
    # Any subset folds to sacrebleu's number on that subset (what the bootstrap relies on).
    rows = METRICS["bleu"].rows(HYPS, REFS)
    assert METRICS["bleu"].fold(rows[1:4]) == pytest.approx(sacrebleu.corpus_bleu(HYPS[1:4], [REFS[1:4]]).score, abs=1e-9)
    details = METRICS["bleu"].details(rows)
    assert details["signature"] == bleu.get_signature().format()
    assert "tok:13a" in details["signature"] and f"version:{sacrebleu.__version__}" in details["signature"]


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL"])
def test_rouge_equals_rouge_score(kind):
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    expected = [scorer.score(r, h)[kind].fmeasure for h, r in zip(HYPS, REFS)]
    rows = METRICS[kind].rows(HYPS, REFS)
    assert rows == pytest.approx(expected, abs=1e-12)
    assert fold(kind, HYPS, REFS) == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    assert 0.0 < fold(kind, HYPS, REFS) < 1.0


def test_label_metrics_equal_hand_counts():
    refs = ["positive", "positive", "positive", "negative", "negative", "neutral"]
    # Case and punctuation are ignored; "great" is an invented label that counts against recall only.
    preds = ["Positive.", "negative", "great", "negative", "positive", "neutral"]
    # positive: tp=1 fp=1 fn=2 -> P=1/2 R=1/3 F1=0.4 ; negative: tp=1 fp=1 fn=1 -> P=R=F1=1/2 ; neutral: all 1.
    table = METRICS["macro_f1"].details(METRICS["macro_f1"].rows(preds, refs))["per_class"]
    assert table["positive"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})
    assert table["negative"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert table["neutral"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})
    assert set(table) == {"positive", "negative", "neutral"}
    assert fold("macro_precision", preds, refs) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert fold("macro_recall", preds, refs) == pytest.approx((1 / 3 + 0.5 + 1.0) / 3)
    assert fold("macro_f1", preds, refs) == pytest.approx((0.4 + 0.5 + 1.0) / 3)
    assert fold("accuracy", preds, refs) == pytest.approx(3 / 6)


def test_exact_match_variants_and_contains():
    assert fold("exact_match", [" Paris "], ["Paris"]) == 1.0
    assert fold("exact_match", ["paris"], ["Paris"]) == 0.0
    assert fold("exact_match_norm", ["Paris!"], ["paris"]) == 1.0
    assert fold("exact_match_casefold", ["PARIS  Texas"], ["paris texas"]) == 1.0
    assert fold("exact_match_casefold", ["paris."], ["paris"]) == 0.0
    assert METRICS["contains_norm"].rows(["It is Paris.", "Parisian food", "seven days"], ["paris", "paris", "7"]) == [1.0, 0.0, 0.0]


def test_json_metrics():
    rows = metric_rows(["json_valid", "json_exact", "json_field_f1"], ['Sure: {"a": 1, "b": 2}', "no json"], ['{"b": 2, "a": 1}', '{"a": 1}'])
    assert rows == {"json_valid": [1.0, 0.0], "json_exact": [1.0, 0.0], "json_field_f1": [1.0, 0.0]}
    assert METRICS["json_field_f1"].rows(['{"a": 1, "b": 3}'], ['{"a": 1, "b": 2, "c": 4}']) == [pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))]


def test_unknown_metric_is_a_clear_config_error():
    with pytest.raises(ConfigError) as exc:
        check_metrics(["exact_match", "blue"])
    assert "blue" in exc.value.message and "bleu" in exc.value.hint


def test_corpus_bootstrap_interval_and_paired_difference():
    m = METRICS["bleu"]
    rows = m.rows(HYPS * 4, REFS * 4)
    value = m.fold(rows)
    lo, hi = stats.bootstrap_fold(rows, m.fold, iters=300, seed=1)
    assert lo <= value <= hi and hi - lo > 1.0
    # A system compared with itself differs by exactly zero in every resample.
    diff, (dlo, dhi) = stats.paired_fold_difference(rows, rows, m.fold, iters=200)
    assert diff == 0.0 and dlo == 0.0 and dhi == 0.0
    worse = m.rows(["x y z"] * 20, REFS * 4)
    diff, (dlo, dhi) = stats.paired_fold_difference(rows, worse, m.fold, iters=200)
    assert diff == pytest.approx(value - m.fold(worse)) and dlo > 0


def test_wilson_interval_closed_form():
    lo, hi = stats.wilson_interval(8, 10)
    p, n, z = 0.8, 10, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half))


@pytest.mark.parametrize("pred,ref,expected", [
    ("{}", "{}", 1.0),                                                     # two empty objects agree
    ("Here: {}", "{}", 1.0),
    ('{"a": 1}', "{}", 0.0),                                               # an invented field, none expected
    ("{}", '{"a": 1}', 0.0),
    ('{"a": {"x": 1, "y": [1, 2]}, "b": 2}', '{"b": 2, "a": {"y": [1, 2], "x": 1}}', 1.0),  # nested key order ignored
    ('{"a": {"x": 1}, "b": 2}', '{"a": {"x": 1, "y": 2}, "b": 2}', 0.5),   # a nested object is one field, right only whole
    ('{"a": [2, 1]}', '{"a": [1, 2]}', 0.0),                               # list order matters
    ("[1, 2]", "[1, 2]", 0.0),                                             # not objects: no fields to score
    ("no json", "{}", 0.0),
])
def test_json_field_f1_edge_cases(pred, ref, expected):
    assert METRICS["json_field_f1"].rows([pred], [ref]) == [pytest.approx(expected)]


_REF = '[{"s": 1, "w": 3, "t": "lab"}, {"s": 2, "w": 5, "t": "quiz"}]'


@pytest.mark.parametrize("pred,ref,expected", [
    (_REF, _REF, 1.0),
    ('Schedule: [{"t": "lab", "w": 3, "s": 1}, {"s": 2, "w": 5, "t": "quiz"}] done', _REF, 1.0),  # key order, prose
    ('[{"s": 1, "w": 3, "t": "lab"}, {"s": 2, "w": 6, "t": "quiz"}]', _REF, 5 / 6),            # one field wrong
    ('[{"s": 1, "w": 3, "t": "lab"}]', _REF, 2 * 1.0 * 0.5 / 1.5),                             # a record missing
    # a loop that runs on: precision 6/9, recall 1
    ('[{"s": 1, "w": 3, "t": "lab"}, {"s": 2, "w": 5, "t": "quiz"}, {"s": 3, "w": 7, "t": "lab"}]', _REF, 0.8),
    ('[{"s": 2, "w": 5, "t": "quiz"}]', _REF, 0.0),                         # shifted: matched by position
    ('[{"s": 1, "w": 3, "t": "lab"}, {"s": 2, "w": 5', _REF, 0.0),          # cut off: not parseable
    ('{"s": 1}', _REF, 0.0),                                                # not a list
    ("[]", "[]", 1.0),
    ("[1, 2]", "[1, 3]", 0.5),                                              # plain items count as fields
])
def test_json_list_f1(pred, ref, expected):
    assert METRICS["json_list_f1"].rows([pred], [ref]) == [pytest.approx(expected)]


@pytest.mark.parametrize("metric,module", [("bleu", "sacrebleu"), ("rouge1", "rouge_score"), ("rougeL", "rouge_score")])
def test_missing_metric_library_is_a_config_error_naming_metric_and_extra(metric, module, monkeypatch):
    check_metrics(["exact_match", metric])  # installed here: no error
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    with pytest.raises(ConfigError) as exc:
        check_metrics(["exact_match", metric])
    assert exc.value.message == f"eval.metrics: {metric} needs the {module} package, which is not installed"
    assert "pip install 'tunesmith[metrics]'" in exc.value.hint and metric in exc.value.hint
    check_metrics(["exact_match", "json_valid"])  # metrics without a library are unaffected


def test_style_statistics_count_sentences_and_words():
    from tunesmith.eval.metrics import METRICS, sentence_count

    assert [sentence_count(t) for t in ("A cat meows.", "Hi! I am here. Yes", "", "It is 3.5 km away.", "Wait... what?")] \
        == [1, 3, 0, 1, 2]
    rows = METRICS["one_sentence"].rows(["Paris.", "Paris. It is big.", "Paris"], ["x", "x", "x"])
    assert rows == [1.0, 0.0, 1.0]
    assert METRICS["words"].rows(["The capital is Paris.", ""], ["", ""]) == [4.0, 0.0]
