"""The shipped long-answer task (assets/schedule): what it promises about its data, and (slow) that
the defaults come within 90 % of what `tunesmith sweep` finds on it."""

from __future__ import annotations

import math
import runpy
from importlib import resources
from pathlib import Path

import pytest
import yaml

from tunesmith.config import load_config
from tunesmith.data.lengths import resolve_max_len
from tunesmith.data.load import load_samples
from tunesmith.data.tokenize import tokenize_sample
from tunesmith.eval.metrics import METRICS, parse_json

from .conftest import REPO

TASK = Path(str(resources.files("tunesmith") / "assets" / "schedule"))


def test_the_generator_writes_the_shipped_files(tmp_path):
    runpy.run_path(str(REPO / "scripts" / "make_schedule_data.py"))["main"](out=tmp_path)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (TASK / name).read_bytes(), name


def test_long_structured_answers_that_the_auto_length_keeps(tokenizer):
    train, test = load_samples(TASK / "train.jsonl"), load_samples(TASK / "test.jsonl")
    assert (len(train), len(test)) == (300, 50)
    lengths = sorted(len(tokenize_sample(tokenizer, s)[0]) for s in train)
    p95 = lengths[int(0.95 * len(lengths))]
    assert 600 <= p95 <= 700, p95
    assert sum(n > 512 for n in lengths) / len(lengths) > 0.3     # what the old max_len 512 would have dropped
    kept = resolve_max_len("auto", lengths, 8192).resolved                  # auto keeps 99 % or more
    assert sum(n <= kept for n in lengths) >= 0.99 * len(lengths)
    answers = [len(tokenizer(s.reference(), add_special_tokens=False)["input_ids"]) for s in train + test]
    assert 150 <= min(answers) and max(answers) <= 520, (min(answers), max(answers))
    # One correct answer per request, a list of records the field-level metric scores.
    refs = [s.reference() for s in test]
    assert all(isinstance(parse_json(r), list) for r in refs)
    assert METRICS["json_list_f1"].rows(refs, refs) == [1.0] * len(refs)


def test_the_config_measures_the_defaults():
    cfg = load_config(TASK / "config.yaml")
    raw = yaml.safe_load((TASK / "config.yaml").read_text())
    assert "train" not in raw and "method" not in raw and "max_len" not in raw["data"] and "max_new_tokens" not in raw["eval"]
    assert "val_split" not in raw["data"]
    assert cfg.data.max_len == cfg.train.lr == cfg.train.epochs == cfg.data.val_split == cfg.eval.max_new_tokens == "auto"
    assert cfg.eval.metrics[0] == "json_list_f1"


@pytest.mark.slow
@pytest.mark.acceptance
@pytest.mark.timeout(2700)   # estimated ~5 min at ~400 tokens/s (idle AVX-512 bf16); not yet timed: written on a loaded CPU
def test_defaults_reach_90_percent_of_the_sweeps_best(tmp_path):
    """A reduced form of the issue-19 check, sized for minutes on an idle 2-core CPU with bf16 (the full one,
    300 examples scored by json_list_f1 on generated answers, takes hours there: docs/training.md). The real
    default model on the first 32 training examples of the shipped task (24 train / 8 validation), every
    other setting at its default in trial 0 (lr, epochs, validation and early stopping `auto`), against
    lr 3e-3 (the best rate of the measured sweep in docs/training.md); scored by validation loss as
    exp(-loss), the mean per-token probability of the right answer, so 90 % means within 0.105 nats of the
    best trial. Not checked here: the generated answers' json_list_f1, the rank and epochs axes, 300 examples."""
    from tunesmith.train.sweep import SweepOptions, run_sweep

    subset = tmp_path / "train32.jsonl"
    subset.write_text("".join((TASK / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:32]))
    cfg = load_config(TASK / "config.yaml", [f"data.train={subset}", "data.val_split=0.25", "eval.enabled=false"])
    result = run_sweep(cfg, SweepOptions(grid=["train.lr=3e-3"], out=str(tmp_path / "sweep")))
    defaults, best = result.trials[0], result.best
    assert defaults.overrides == {} and len(result.trials) == 2
    assert all(math.isfinite(t.val_loss) for t in result.trials)
    ratio = math.exp(best.val_loss - defaults.val_loss)
    assert ratio >= 0.9, f"defaults val loss {defaults.val_loss:.4f} vs best {best.val_loss:.4f} (ratio {ratio:.3f})"
