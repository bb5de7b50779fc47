"""data.train as a mix of sources (weights, counts, the shipped general set), `data inspect` of a
config's mix, and `data symbolize` (symbol tuning)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.data.mix import BUILTIN, load_mix, task_examples
from tunesmith.errors import ConfigError, DataError

ASSETS = Path(__file__).resolve().parents[2] / "src" / "tunesmith" / "assets"


def _task(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Code for item {i}?"},
                                                     {"role": "assistant", "content": f"ITEM-{i:03d}"}]}) + "\n"
                            for i in range(n)))
    return path


def _config(tmp_path: Path, train: list) -> Path:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": train, "val_split": 0}, "train": {"seed": 3}}))
    return path


def test_weights_size_the_mix_by_the_first_source_used_whole(tmp_path):
    _task(tmp_path / "task.jsonl", 30)
    cfg = load_config(_config(tmp_path, [{"path": "task.jsonl", "weight": 0.8}, {"path": "general", "weight": 0.2}]))
    assert cfg.data.train[0].path == str(tmp_path / "task.jsonl") and cfg.data.train[1].path == "general"
    samples, parts = load_mix(cfg.data.train, "auto", cfg.train.seed)
    assert [(p.available, p.taken) for p in parts] == [(30, 30), (144, 8)]     # 30 / 0.8 = 37.5 in all
    sources = Counter(Path(s.source.rsplit(":", 1)[0]).name for s in samples)
    assert sources == {"task.jsonl": 30, "instructions.jsonl": 8}
    again, _ = load_mix(cfg.data.train, "auto", cfg.train.seed)
    assert [s.source for s in again] == [s.source for s in samples]          # seeded: reproducible
    # The run's own loader uses the mix.
    from tunesmith.events import Events
    from tunesmith.pipeline import load_data

    messages = []
    events = Events()
    events.message = messages.append
    _, train, val = load_data(cfg, events=events)
    assert len(train) + len(val) == 38 and messages == ["data mix: task.jsonl 30/30 (79%), instructions.jsonl 8/144 (21%)"]
    # The few-shot baselines draw demonstrations from the task's own examples, never from the shipped set.
    own = task_examples(samples, cfg.data.train)
    assert len(own) == 30 and all(Path(s.source.rsplit(":", 1)[0]).name == "task.jsonl" for s in own)
    general_only, _ = load_mix(load_config(_config(tmp_path, ["general"])).data.train, "auto", 0)
    assert task_examples(general_only, ["general"]) == general_only             # nothing else to draw from
    # A mix-in of your own (here a general set you answered yourself) is no task demonstration either.
    mine = tmp_path / "mine.jsonl"
    mine.write_text((ASSETS / "general" / "instructions.jsonl").read_text())
    cfg = load_config(_config(tmp_path, [{"path": "task.jsonl", "weight": 0.8}, {"path": "mine.jsonl", "weight": 0.2}]))
    samples, _ = load_mix(cfg.data.train, "auto", cfg.train.seed)
    own = task_examples(samples, cfg.data.train)
    assert len(samples) == 38 and len(own) == 30
    assert all(Path(s.source.rsplit(":", 1)[0]).name == "task.jsonl" for s in own)


def test_a_later_source_smaller_than_its_share_is_repeated_and_no_task_example_is_left_out(tmp_path):
    _task(tmp_path / "task.jsonl", 480)
    cfg = load_config(_config(tmp_path, [{"path": "task.jsonl", "weight": 3}, {"path": "general", "weight": 1}]))
    samples, parts = load_mix(cfg.data.train, "auto", cfg.train.seed)
    assert [(p.available, p.taken) for p in parts] == [(480, 480), (144, 160)]     # 480 / 0.75 = 640 in all
    task = Counter(s.source for s in samples if "task.jsonl" in s.source)
    general = Counter(s.source for s in samples if "instructions.jsonl" in s.source)
    assert len(task) == 480 and set(task.values()) == {1}
    assert len(general) == 144 and sorted(Counter(general.values()).items()) == [(1, 128), (2, 16)]


def test_counts_repeat_a_small_source_and_whole_sources_stay_whole(tmp_path):
    _task(tmp_path / "task.jsonl", 5)
    cfg = load_config(_config(tmp_path, [{"path": "task.jsonl", "count": 12}, "general"]))
    samples, parts = load_mix(cfg.data.train, "auto", 0)
    assert [(p.available, p.taken) for p in parts] == [(5, 12), (144, 144)]
    assert max(Counter(s.source for s in samples if "task" in s.source).values()) == 3   # 12 = 2 x 5 + 2


@pytest.mark.parametrize("train, message", [
    ([{"path": "a.jsonl", "weight": 0.5}, {"path": "b.jsonl"}], "give every source a weight, or none"),
    ([{"path": "a.jsonl", "weight": 0.5, "count": 3}], "give a weight or a count, not both"),
    ([{"path": "a.jsonl", "wieght": 0.5}], "unknown key 'wieght' (did you mean 'weight'?)"),
    ([{"path": "a.jsonl", "weight": -1}], "source 1 weight: Input should be greater than 0"),
    ([], "an empty list of sources"),
    ([{"path": "a.jsonl", "weight": 0.8, "answers": "base"}, {"path": "general", "weight": 0.2}],
     "source 1 is the task's data, trained as written; answers: base is for the mix-ins after it"),
    ([{"path": "a.jsonl"}, {"path": "general", "answers": "model"}], "source 2 answers: Input should be 'as_written' or 'base'"),
])
def test_bad_mixes_are_one_config_error(tmp_path, train, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_config(tmp_path, train))


def test_the_general_set_shares_no_question_with_the_forgetting_probe():
    from tunesmith.data.load import load_samples
    from tunesmith.synth.novelty import HeldOutIndex

    general = load_samples(BUILTIN["general"])
    probe = load_samples(ASSETS / "regression" / "qa.jsonl")
    assert len(general) == 144 and len({s.messages[0]["content"] for s in general}) == 144
    index = HeldOutIndex([(s.id, s.messages[0]["content"]) for s in probe], 6)
    assert [s.id for s in general if index.overlap(s.messages[0]["content"])] == []
    assert "Apache-2.0" in (ASSETS / "general" / "README.md").read_text()


def test_the_forgetting_probe_is_what_its_script_writes():
    """assets/regression/qa.jsonl comes from scripts/make_regression_probe.py: 150 questions, three phrasings,
    one short answer each, the first 36 (ids qa-000 to qa-035) as they always were."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "make_regression_probe.py"))
    shipped = [json.loads(line) for line in (ASSETS / "regression" / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert shipped == script["records"]() and len(shipped) == 150
    prompts = [r["messages"][0]["content"] for r in shipped]
    assert prompts[0] == "What is the capital of France? Answer in a few words." and shipped[35]["id"] == "qa-035"
    assert sum(p.endswith(script["FEW_WORDS"]) for p in prompts) == 70
    assert sum(p.startswith(script["FILL"]) for p in prompts) == 40
    assert all(len(r["messages"][1]["content"].split()) <= 4 for r in shipped)


def cli(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_data_inspect_shows_a_configs_mix(tmp_path, capsys):
    _task(tmp_path / "task.jsonl", 30)
    config = _config(tmp_path, [{"path": "task.jsonl", "weight": 0.8}, {"path": "general", "weight": 0.2}])
    code, out, err = cli(["data", "inspect", str(config), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["examples"] == 38
    assert [(Path(m["path"]).name, m["taken"], m["share"], m["weight"]) for m in report["mix"]] == \
        [("task.jsonl", 30, round(30 / 38, 4), 0.8), ("instructions.jsonl", 8, round(8 / 38, 4), 0.2)]


def _labelled(path: Path) -> Path:
    reviews = {"positive": ["great value", "works perfectly", "lovely staff", "fast delivery", "would buy again"],
               "negative": ["broke in a week", "rude support", "arrived late", "waste of money", "never again"],
               "neutral": ["it is a chair", "arrived on tuesday", "blue as pictured", "as described", "standard box"]}
    rows = [{"instruction": f"Review: {text}", "output": label} for label, texts in reviews.items() for text in texts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_symbolize_replaces_labels_with_symbols_learnable_in_context(tmp_path, capsys):
    src = _labelled(tmp_path / "reviews.jsonl")
    out = tmp_path / "symbols.jsonl"
    code, stdout, err = cli(["data", "symbolize", str(src), "-o", str(out), "--n", "50", "--k", "4"], capsys)
    assert code == 0, err
    assert "15 examples, 3 labels -> 50 prompts" in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 50
    truth = {json.loads(line)["instruction"]: json.loads(line)["output"] for line in src.read_text().splitlines()}
    symbol_sets = set()
    for row in rows:
        prompt, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        assert not re.search(r"\b(positive|negative|neutral)\b", prompt)          # no label word left
        shots = re.findall(r"Input: (.*)\nOutput: (\S+)", prompt)
        query = prompt.rsplit("Input: ", 1)[1].removesuffix("\nOutput:")
        assert len(shots) == 4
        mapping = {}
        for text, symbol in shots:                                              # one symbol per label
            assert mapping.setdefault(truth[text], symbol) == symbol
        assert mapping[truth[query]] == answer                                  # the answer is learnable in context
        symbol_sets.add(tuple(sorted(mapping.values())))
    assert len(symbol_sets) > 10                                                # symbols drawn afresh per prompt
    import tunesmith.data.load as load

    assert len(load.load_samples(out)) == 50


def test_symbolize_refuses_data_that_is_not_classification(tmp_path):
    from tunesmith.data.symbolize import symbolize

    with pytest.raises(DataError, match="does not look like classification data"):
        symbolize([(f"q{i}", f"a{i}") for i in range(10)], 5, 4, 0)
    with pytest.raises(DataError, match="every example has the same answer"):
        symbolize([(f"q{i}", "a") for i in range(10)], 5, 4, 0)
