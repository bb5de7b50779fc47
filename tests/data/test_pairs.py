"""`tunesmith data pairs`: preference pairs from an eval folder's answers and judge verdicts, kept only
when both orders agree. Once on a folder `run_eval` wrote (tiny model, toy adapter, a judge from the
judge registry), once on hand-written rows in the same layout that hit every drop reason."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main
from tunesmith.data.load import read_samples
from tunesmith.data.pairs import build_pairs
from tunesmith.errors import DataError


def run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class LongerAnswerJudge:
    """Order-independent: the longer answer wins, equal lengths tie. Its verdicts are known in advance."""
    name = "longer"

    def verdict(self, prompt: str) -> str:
        a = prompt.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
        b = prompt.split("[Answer B]\n", 1)[1].split("\n\nReply", 1)[0]
        return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


@pytest.fixture
def eval_folder(tmp_path_factory, tiny_model_dir, tokenizer, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.config import EvalConfig
    from tunesmith.data.schema import Sample
    from tunesmith.eval import judge
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.models import load_model

    monkeypatch.setitem(judge.JUDGES, "longer", lambda spec, **_: LongerAnswerJudge())
    torch.manual_seed(5)
    model = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                                       init_lora_weights=False)).eval()
    samples = [Sample(messages=[{"role": "user", "content": f"Tell me about item {i}."},
                                {"role": "assistant", "content": f"Item {i}."}], id=f"q{i}") for i in range(8)]
    out = tmp_path_factory.mktemp("eval")
    cfg = EvalConfig(metrics=["exact_match"], baselines=["zero-shot"], max_new_tokens=6, temperature=1.0, seed=1,
                     regression=False, perplexity=False, judge="longer:any")
    run_eval(build_systems(model, ["zero-shot"]), tokenizer, samples, cfg, out)
    return out


def test_pairs_from_a_real_eval_folder(eval_folder, tmp_path, capsys):
    rows = _rows(eval_folder / "predictions.jsonl")
    answers = {(r["system"], r["id"]): r["prediction"] for r in rows}
    judged = [r for r in rows if "judge" in r]
    assert len(judged) == 8 and {r["judge"]["against"] for r in judged} == {"base_zero_shot"}
    out = tmp_path / "pairs.jsonl"
    code, printed, err = run(["data", "pairs", str(eval_folder), "-o", str(out), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(printed)

    # What the pairs must be, from the answers alone: the longer answer is chosen, equal lengths dropped.
    expected = []
    ties = 0
    for i in range(8):
        tuned, base = answers[("tuned", f"q{i}")], answers[("base_zero_shot", f"q{i}")]
        if len(tuned) == len(base):
            ties += 1
            continue
        chosen, rejected = (tuned, base) if len(tuned) > len(base) else (base, tuned)
        if chosen.strip() and rejected.strip() and chosen.strip() != rejected.strip():
            expected.append((f"q{i}", chosen, rejected))
    assert summary["judge"] == "longer" and summary["systems"] == ["tuned", "base_zero_shot"]
    assert summary["judged"] == 8 and summary["kept"] == len(expected) > 0
    assert summary["dropped"]["judge_tie"] == ties and summary["dropped"]["orders_disagree"] == 0
    assert summary["kept"] + sum(summary["dropped"].values()) == 8
    assert sum(summary["chosen_by_system"].values()) == summary["kept"]

    written = _rows(out)
    assert [(r["id"], r["chosen"], r["rejected"]) for r in written] == expected
    assert all(r["prompt"] == f"Tell me about item {r['id'][1:]}." for r in written)
    result = read_samples(out)
    assert result.format == "preference" and result.errors == [] and result.valid == len(expected)

    # The human-readable table names the counts.
    code, printed, _ = run(["data", "pairs", str(eval_folder / "predictions.jsonl"), "-o", str(out)], capsys)
    assert code == 0 and f"wrote {len(expected)} pairs to {out}" in printed
    assert "8 examples judged (tuned vs base_zero_shot, judge longer)" in " ".join(printed.split())


HAND = [  # (id, tuned answer, base answer, tuned as A, tuned as B) -> kept or why dropped
    ("win", "Paris.", "London.", "A", "B"),             # tuned wins both orders
    ("loss", "Lyon.", "Paris.", "B", "A"),              # base wins both orders
    ("tie", "Paris.", "paris", "A", "tie"),             # a tie in one order
    ("disagree", "Rome.", "Paris.", "A", "A"),          # position bias: always answer A
    ("empty", "", "Paris.", "B", "A"),
    ("same", "Paris.", " Paris. ", "A", "B"),
    ("missing", "Paris.", None, "A", "B"),              # the baseline's row is not in the file
]


def _hand_folder(path):
    path.mkdir()
    lines = []
    for id_, tuned, base, first, second in HAND:
        prompt = [{"role": "user", "content": f"Question {id_}?"}]
        if base is not None:
            lines.append({"system": "base_zero_shot", "id": id_, "prompt": prompt, "prediction": base,
                          "reference": "Paris.", "scores": {"exact_match": 0.0}})
        from tunesmith.eval.judge import combine

        lines.append({"system": "tuned", "id": id_, "prompt": prompt, "prediction": tuned, "reference": "Paris.",
                      "scores": {"exact_match": 0.0},
                      "judge": {"against": "base_zero_shot", "tuned_first": first, "tuned_second": second,
                                "outcome": combine(first, second)}})
    # A code row and a preference row from other sections are ignored.
    lines.append({"system": "tuned", "id": "task-1", "prompt": "def f():", "completions": [], "passed": []})
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    (path / "report.json").write_text(json.dumps({"judge": {"judge": "local:tiny"}}), encoding="utf-8")
    return path


def test_every_drop_reason_is_counted(tmp_path, capsys):
    folder = _hand_folder(tmp_path / "run")
    out = tmp_path / "pairs.jsonl"
    summary = build_pairs(folder, out)
    assert summary.judged == 7 and summary.kept == 2
    assert summary.dropped == {"missing_answer": 1, "judge_tie": 1, "orders_disagree": 1, "empty_answer": 1,
                               "same_answer": 1}
    assert summary.chosen_by_system == {"tuned": 1, "base_zero_shot": 1}
    assert _rows(out) == [
        {"id": "win", "prompt": "Question win?", "chosen": "Paris.", "rejected": "London.",
         "chosen_system": "tuned", "rejected_system": "base_zero_shot"},
        {"id": "loss", "prompt": "Question loss?", "chosen": "Paris.", "rejected": "Lyon.",
         "chosen_system": "base_zero_shot", "rejected_system": "tuned"},
    ]
    code, printed, _ = run(["data", "pairs", str(folder), "-o", str(tmp_path / "p.json")], capsys)
    flat = " ".join(printed.split())
    assert code == 0 and "dropped: orders disagree" in flat and "kept: tuned answer chosen" in flat
    assert [s.chosen for s in read_samples(tmp_path / "p.json").samples] == ["Paris.", "Paris."]


def test_clear_errors_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    # An eval without a judge.
    folder = tmp_path / "nojudge"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text(json.dumps({"system": "tuned", "id": "a", "prompt": [],
                                                          "prediction": "x", "reference": "y"}) + "\n")
    code, _, err = run(["data", "pairs", str(folder), "-o", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{folder / 'predictions.jsonl'}: no judge verdicts: this evaluation ran without a judge" in err
    assert "run eval with --judge local:MODEL or --judge openai:MODEL" in " ".join(err.split())
    # A folder with no predictions at all.
    code, _, err = run(["data", "pairs", str(tmp_path), "-o", str(out)], capsys)
    assert code == 2 and f"{tmp_path}: no predictions.jsonl in this folder" in err
    # Every judged pair dropped: an error, not an empty file.
    only_ties = _hand_folder(tmp_path / "ties")
    rows = [r for r in _rows(only_ties / "predictions.jsonl") if r["id"] in ("tie", "disagree")]
    (only_ties / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="no pair kept out of 2 judged examples \\(1 judge tie, 1 orders disagree\\)"):
        build_pairs(only_ties, out)
    # A damaged line names the file and line.
    (only_ties / "predictions.jsonl").write_text("{}\n{not json\n")
    with pytest.raises(DataError, match=":2: invalid JSON"):
        build_pairs(only_ties, out)
    assert not out.exists()
