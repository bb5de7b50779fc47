"""`data.max_len: auto` and `eval.max_new_tokens: auto` through a run, on the tiny model: a dataset whose
95th-percentile example is ~700 tokens trains with nothing dropped under the defaults, an explicit
`data.max_len: 256` behaves as it always did, the model's context caps `auto` with a loud warning, and
eval's automatic budget does not cut a 400-token reference."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tunesmith.config import EvalConfig, validate
from tunesmith.data.lengths import new_tokens_budget
from tunesmith.data.load import load_samples
from tunesmith.data.schema import Sample
from tunesmith.data.tokenize import tokenize_all, tokenize_sample
from tunesmith.events import Events, Message
from tunesmith.pipeline import _Run

from ..conftest import make_tiny_llama, write_jsonl

WORDS = ["alpha", "beta", "gamma", "delta"]


def _answer(n_words: int, i: int) -> str:
    return " ".join(WORDS[(i + j) % 4] for j in range(n_words))


@pytest.fixture
def long_data(tmp_path):
    """40 chats of ~330 to ~720 tokens: long structured answers, as in the issue's dataset."""
    rows = [{"messages": [{"role": "user", "content": f"List the items of case {i}."},
                          {"role": "assistant", "content": _answer(300 + 10 * i, i)}]} for i in range(40)]
    return write_jsonl(tmp_path / "long.jsonl", rows)


@pytest.fixture
def mixed_data(tmp_path):
    """30 chats under 256 tokens and 10 over it (25 %)."""
    rows = [{"messages": [{"role": "user", "content": f"Case {i}?"},
                          {"role": "assistant", "content": _answer(60 + 5 * i if i < 30 else 300 + i, i)}]}
            for i in range(40)]
    return write_jsonl(tmp_path / "mixed.jsonl", rows)


def _lengths(tokenizer, path):
    return [len(tokenize_sample(tokenizer, s)[0]) for s in load_samples(path)]


def _run(tmp_path, model_dir, data, **data_keys):
    cfg = validate({"model": {"base": str(model_dir)}, "data": {"train": str(data), **data_keys},
                    "method": {"name": "lora", "r": 4, "alpha": 8},
                    "train": {"max_steps": 1, "batch_size": 4, "precision": "fp32"},
                    "eval": {"enabled": False}, "output": {"dir": str(tmp_path / "run")}})
    messages: list[Message] = []
    job = _Run(cfg, Events(lambda e: messages.append(e) if isinstance(e, Message) else None))
    job.execute(resume=False)
    run_dir = tmp_path / "run"
    stats = json.loads((run_dir / "data_stats.json").read_text())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    return job, stats, saved, messages


def test_long_examples_train_with_none_dropped_under_the_defaults(tmp_path, tiny_model_dir, tokenizer, long_data):
    lengths = sorted(_lengths(tokenizer, long_data))
    p95 = lengths[math.ceil(0.95 * len(lengths)) - 1]
    p99 = lengths[math.ceil(0.99 * len(lengths)) - 1]
    assert 650 <= p95 <= 750 and sum(n > 512 for n in lengths) >= 10   # the old default would drop a quarter
    job, stats, saved, messages = _run(tmp_path, tiny_model_dir, long_data)   # data.max_len at its default

    expected = math.ceil(p99 / 64) * 64                                   # the smallest multiple of 64 >= p99
    assert expected == 768
    assert stats["max_len"] == {"setting": "auto", "resolved": expected, "coverage": 1.0, "examples": 40, "longer": 0,
                                "p99": p99, "longest": lengths[-1], "context": 1024, "capped": False}
    assert stats["train"]["examples"] == 40 and stats["train"]["dropped_overlong"] == 0
    line = next(m.text for m in messages if m.text.startswith("data:"))
    assert line == (f"data: 40 train / 0 val examples; none dropped; data.max_len: auto = {expected} "
                    f"(fits 100.0% of 40 training examples; 99th percentile {p99} tokens)")
    assert not [m for m in messages if m.level == "warning"]
    # One number downstream: the saved config, the run's config, and the packed row size of the objective.
    assert saved["data"]["max_len"] == job.cfg.data.max_len == job.trainer.objective.max_len == expected


def test_an_explicit_max_len_behaves_as_before(tmp_path, tiny_model_dir, tokenizer, mixed_data):
    job, stats, saved, messages = _run(tmp_path, tiny_model_dir, mixed_data, max_len=256)
    _, before = tokenize_all(tokenizer, load_samples(mixed_data), max_len=256)
    assert before.dropped_overlong == sum(n > 256 for n in _lengths(tokenizer, mixed_data)) == 10
    assert stats["train"] == before.as_dict()
    assert stats["max_len"] == {"setting": 256, "resolved": 256}
    assert saved["data"]["max_len"] == job.trainer.objective.max_len == 256
    assert [m.text for m in messages if m.text.startswith("data:")] == [
        "data: 30 train / 0 val examples; 10 dropped as longer than data.max_len=256"]
    # A quarter dropped is more than 1 %: the run says so, and how to keep them.
    [warning] = [m.text for m in messages if m.level == "warning"]
    assert "data.max_len=256: 10 of 40 training examples (25.0%)" in warning and "data.max_len: auto" in warning


def test_the_models_context_caps_auto_with_a_loud_warning(tmp_path, tokenizer, mixed_data):
    short = make_tiny_llama(tokenizer, tmp_path / "short-context", max_positions=256)
    lengths = _lengths(tokenizer, mixed_data)
    job, stats, saved, messages = _run(tmp_path, short, mixed_data)
    assert stats["max_len"]["resolved"] == saved["data"]["max_len"] == 256
    assert stats["max_len"]["capped"] is True and stats["max_len"]["coverage"] == 0.75
    assert stats["train"]["dropped_overlong"] == sum(n > 256 for n in lengths) == 10
    [warning] = [m.text for m in messages if m.level == "warning"]
    assert warning.startswith("data.max_len: auto is capped by the model's context (256 tokens): 10 of 40 training "
                              "examples (25.0%")
    assert "Fix:" in warning and "data.overlong: truncate" in warning


def test_eval_auto_budget_does_not_cut_a_400_token_reference(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.eval.sections import generation
    from tunesmith.models import load_model

    long_reference = _answer(400, 0)
    n_ref = len(tokenizer(long_reference, add_special_tokens=False)["input_ids"])
    assert n_ref >= 400
    answers = {"List them all.": long_reference, "One?": "alpha"}
    samples = [Sample(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
               for q, a in answers.items()]

    def perfect_model(model, tok, convs, *, max_new_tokens, **kwargs):
        """A model that answers every reference word for word, within the budget it is given."""
        ids = [tok(answers[c[-1]["content"]], add_special_tokens=False)["input_ids"][:max_new_tokens] for c in convs]
        return [tok.decode(i) for i in ids]

    monkeypatch.setattr(generation, "generate", perfect_model)
    model = load_model(str(tiny_model_dir)).eval()
    scores = {}
    for setting in ("auto", 128):     # the default now, and the default before
        cfg = EvalConfig(metrics=["exact_match"], baselines=[], regression=False, perplexity=False,
                         max_new_tokens=setting)
        run_eval(build_systems(model, []), tokenizer, samples, cfg, tmp_path / str(setting))
        report = json.loads((tmp_path / str(setting) / "report.json").read_text())
        scores[setting] = report["systems"]["tuned"]["exact_match"]
        if setting == "auto":
            budget = report["generation"]["max_new_tokens"]
            assert budget == new_tokens_budget(n_ref) == 512 and budget >= 1.25 * n_ref
            assert report["generation"]["max_new_tokens_setting"] == "auto"
            assert report["generation"]["longest_reference_tokens"] == n_ref
            assert report["max_new_tokens"] == {"setting": "auto", "resolved": 512, "longest_reference": n_ref,
                                                "references": 2, "cap": 1024, "capped": False}
        else:
            assert report["generation"]["max_new_tokens"] == 128 and "max_new_tokens" not in report
    assert scores == {"auto": 1.0, 128: 0.5}     # 128 tokens cut the long answer; auto does not


@pytest.mark.parametrize("setting,chat_budget,code_budget", [("auto", 64, 512), (8, 8, 8)])
def test_every_generating_section_gets_an_integer_budget(setting, chat_budget, code_budget, tmp_path, tokenizer,
                                                         tiny_model_dir, monkeypatch):
    """Chat answers get the budget from their references; programs (no reference) at least 512 under auto."""
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.eval.sections import generation
    from tunesmith.models import load_model

    asked = []

    def fake_generate(model, tok, convs, *, max_new_tokens, **kwargs):
        asked.append(max_new_tokens)
        return ["def add(a, b):\n    return a + b"] * len(convs)

    monkeypatch.setattr(generation, "generate", fake_generate)
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": "add", "prompt": "Write add(a, b).",
                                                    "test": "assert add(2, 3) == 5"}])
    reference = _answer(40, 1)
    assert new_tokens_budget(len(tokenizer(reference, add_special_tokens=False)["input_ids"])) == 64
    samples = [Sample(messages=[{"role": "user", "content": "List."}, {"role": "assistant", "content": reference}])]
    cfg = EvalConfig(metrics=["exact_match"], baselines=[], regression=False, perplexity=False, code_tasks=str(tasks),
                     code_samples=1, max_new_tokens=setting)
    run_eval(build_systems(load_model(str(tiny_model_dir)), []), tokenizer, samples, cfg, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert asked == [chat_budget, code_budget]
    assert report["generation"]["max_new_tokens"] == chat_budget and report["code"]["max_new_tokens"] == code_budget
    assert ("max_new_tokens" in report) == (setting == "auto")
