"""A mix-in source answered by the base model (data/self_answers.py, `answers: base` in data.train)."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import MixSource, load_config
from tunesmith.data import self_answers
from tunesmith.data.load import load_samples
from tunesmith.data.mix import load_mix
from tunesmith.errors import ConfigError
from tunesmith.events import Events, Message

from ..conftest import write_jsonl

GENERAL = [("Name a color of the sky on a clear day.", "Blue."), ("What is 2 plus 2?", "4"),
           ("Say hello in French.", "Bonjour."), ("Give one word that rhymes with cat.", "Hat."),
           ("What do you call a baby dog?", "A puppy."), ("Name a fruit that is yellow.", "A banana.")]


@pytest.fixture
def general(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))      # the answer cache goes here
    return write_jsonl(tmp_path / "general.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in GENERAL])


def test_cut_off_answers_are_dropped_and_the_answers_are_cached(general, tiny_model_dir, tokenizer, monkeypatch):
    """The tiny random model never says end-of-turn: at a 6-token limit every answer is cut, so every one is
    dropped; a second call reads the cache instead of generating."""
    monkeypatch.setattr(self_answers, "MAX_NEW_TOKENS", 6)
    samples = load_samples(general)
    done = self_answers.answered_by_base(samples, "general.jsonl", tiny_model_dir, tokenizer, seed=3, precision="fp32")
    assert done.samples == [] and done.dropped_cut == len(GENERAL) and not done.cached
    (cache,) = (general.parent / "home" / "cache" / "self_answers").iterdir()
    replies = json.loads(cache.read_text())
    assert [cut for _, cut in replies] == [True] * len(GENERAL) and all(text for text, _ in replies)

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(self_answers, "_generate", no_generation)
    again = self_answers.answered_by_base(samples, "general.jsonl", tiny_model_dir, tokenizer, seed=3, precision="fp32")
    assert again.cached and again.dropped_cut == len(GENERAL)
    with pytest.raises(AssertionError, match="generated again"):      # another seed is another key
        self_answers.answered_by_base(samples, "general.jsonl", tiny_model_dir, tokenizer, seed=4, precision="fp32")

    # An empty reply is dropped too, and counted apart from the cut ones.
    replies = [["", False], ["  ", False], ["cut", True]] + [["fine", False]] * (len(samples) - 3)
    monkeypatch.setattr(self_answers, "_generate", lambda *a, **k: replies)
    mixed = self_answers.answered_by_base(samples, "general.jsonl", tiny_model_dir, tokenizer, seed=5, precision="fp32")
    assert (mixed.dropped_empty, mixed.dropped_cut, len(mixed.samples)) == (2, 1, len(samples) - 3)


def test_only_chat_sources_can_be_answered_by_the_base(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    texts = load_samples(write_jsonl(tmp_path / "t.jsonl", [{"text": "Plain text."}]))
    with pytest.raises(ConfigError, match=r"t.jsonl has answers: base, but .*t.jsonl:1 is a text example"):
        self_answers.answered_by_base(texts, "t.jsonl", tiny_model_dir, tokenizer, seed=0, precision="fp32")


def test_data_inspect_shows_the_source_without_generating(general, tmp_path, capsys, monkeypatch):
    import yaml

    from tunesmith.cli import main

    monkeypatch.setattr(self_answers, "_generate", lambda *a, **k: pytest.fail("inspect generated answers"))
    task = write_jsonl(tmp_path / "task.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"},
                                                               {"role": "assistant", "content": f"a{i}"}]} for i in range(8)])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": [{"path": str(task), "weight": 0.8},
                                                         {"path": str(general), "weight": 0.2, "answers": "base"}]}}))
    assert load_config(config).data.train[1].answers == "base"
    with pytest.raises(SystemExit) as exc:
        main(["data", "inspect", str(config), "--json"])
        raise SystemExit(0)
    assert exc.value.code in (0, None)
    mix = json.loads(capsys.readouterr().out)["mix"]
    assert [p["answers"] for p in mix] == ["as_written", "base"] and [p["taken"] for p in mix] == [8, 2]


@pytest.mark.slow
def test_the_default_model_answers_a_source_as_it_would_be_asked(general, default_model_dir, tokenizer):
    """Each kept answer is the default model's sampled reply to the prompt (the run's seed, TEMPERATURE), not the
    written one; the run's mix takes them through `load_data`, and says so."""
    from tunesmith.generation import generate_tokens
    from tunesmith.models import load_model
    from tunesmith.pipeline import base_answerer

    samples = load_samples(general)
    messages = []
    answer = base_answerer(default_model_dir, tokenizer, load_config_for(general), Events(messages.append))
    mixed, parts = load_mix([MixSource(path=str(general), answers="base")], "auto", 3, answer)
    assert parts[0].answers == "base" and parts[0].available == len(mixed) >= len(GENERAL) - 1
    ids = generate_tokens(load_model(str(default_model_dir)).eval(), tokenizer, [s.prompt_messages() for s in samples],
                          max_new_tokens=self_answers.MAX_NEW_TOKENS, batch_size=self_answers.BATCH,
                          temperature=self_answers.TEMPERATURE, seed=3, precision="fp32")
    expected = {s.prompt_messages()[0]["content"]: tokenizer.decode(new, skip_special_tokens=True).strip()
                for s, new in zip(samples, ids) if len(new) < self_answers.MAX_NEW_TOKENS}
    got = {s.messages[0]["content"]: s.messages[-1]["content"] for s in mixed}
    assert got == expected
    assert sum(got[q] != a for q, a in GENERAL if q in got) >= len(got) - 1      # its own words, not the written ones
    assert all(len(s.messages) == 2 and s.messages[-1]["role"] == "assistant" for s in mixed)
    (line,) = [m.text for m in messages if isinstance(m, Message)]
    assert line.startswith(f"data.train: {general}: {len(mixed)} answers by the base model (in ")


def load_config_for(general):
    """A run config whose train.seed is 3 and precision fp32, as the test above generates."""
    from tunesmith.config import RunConfig

    return RunConfig.model_validate({"data": {"train": str(general)}, "train": {"seed": 3, "precision": "fp32"}})
