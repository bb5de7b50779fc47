"""Curation stages: ROUGE-L as rouge-score computes it, the judge filter on planted wrong answers,
JSON Schema and Python checks (and their bad inputs), decontamination against a held-out set."""

from __future__ import annotations

import json

import pytest

from tests.synth.teacher_server import order, wrong
from tunesmith.errors import UserError
from tunesmith.synth.cache import RequestCache
from tunesmith.synth.checks import load_check
from tunesmith.synth.curate import JudgeStage, NoveltyStage, load_rubric, parse_score
from tunesmith.synth.examples import Candidate, InvalidReply, parse_pairs
from tunesmith.synth.novelty import HeldOutIndex, rouge_l, rouge_tokens
from tunesmith.synth.teacher import TeacherSettings, make_teacher


def _candidate(prompt: str, answer: str, ident: str = "") -> Candidate:
    return Candidate([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], {"mode": "t", "n": ident})


def test_rouge_l_matches_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [("The cat sat on the mat.", "A cat was sitting on a mat!"), (order(1)[0], order(2)[0]),
             ("Write a haiku about rain", "Compose a poem about the rain in spring"), ("abc", "xyz")]
    for a, b in pairs:
        assert rouge_l(rouge_tokens(a), rouge_tokens(b)) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)


def test_novelty_ignores_the_shared_instruction_and_drops_paraphrases():
    seeds = [order(n)[0] for n in range(5)]
    stage = NoveltyStage(seeds, threshold=0.7)
    assert stage.prefix.startswith("Extract the order as JSON") and stage.prefix.endswith("\nOrder: The ")
    new = _candidate(order(40)[0], order(40)[1])
    copy = _candidate(order(2)[0].replace("team", "group"), order(2)[1])
    kept = stage.run([new, copy])
    assert kept == [new] and copy.provenance["scores"]["rouge_l_max"] >= 0.7
    assert new.provenance["scores"]["rouge_l_max"] < 0.7


def test_judge_filter_rejects_planted_wrong_answers_and_keeps_correct_ones(teacher, tmp_path):
    scripted, url = teacher
    good = [_candidate(*order(n), ident=f"good{n}") for n in range(100, 150)]
    bad = [_candidate(*wrong(n), ident=f"bad{n}") for n in range(200, 250)]
    judge = make_teacher("openai:scripted", TeacherSettings(backoff_seconds=0.01), RequestCache(tmp_path / "c"), base_url=url)
    stage = JudgeStage(judge, 7, load_rubric())
    kept = stage.run(good + bad)
    kept_good, kept_bad = sum(c in kept for c in good), sum(c in kept for c in bad)
    assert kept_good / len(good) >= 0.9 and 1 - kept_bad / len(bad) >= 0.9
    assert stage.count.dropped["judge score < 7"] == len(bad) - kept_bad
    assert all(c.provenance["scores"]["judge"] >= 7 for c in kept)
    assert judge.usage["judge"].requests == 100


def test_parse_score_and_invalid_replies():
    assert parse_score("Reasoning...\nScore: 8") == 8 and parse_score("**Score:** 3\n\nScore: 9/10") == 9
    assert parse_score("7") == 7 and parse_score("I like it") is None and parse_score("Score: 42") is None
    assert parse_pairs('blah ```json\n{"prompt": "p", "response": {"a": 1}}\n``` ok') == [("p", '{"a": 1}')]
    for reply in ["no json here", '{"prompt": "only a prompt"}', "[]", '[1, 2]', ""]:
        with pytest.raises(InvalidReply):
            parse_pairs(reply)


SCHEMA = {"type": "object", "required": ["item", "quantity"], "properties": {"quantity": {"type": "integer"}}}


def test_json_schema_check(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    check = load_check(path)
    assert check(_candidate("q", '{"item": "lamp", "quantity": 2}').record()) is None
    assert check(_candidate("q", '{"item": "lamp", "quantity": "two"}').record()) == "schema: quantity: type"
    assert check(_candidate("q", '{"item": "lamp"}').record()) == "schema: required"
    assert check(_candidate("q", "not json").record()) == "schema: the answer is not JSON"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())   # as Notepad saves it: the same schema
    assert load_check(path)(_candidate("q", '{"item": "lamp"}').record()) == "schema: required"


@pytest.mark.parametrize("text, message", [
    (json.dumps({"type": 12}), "not a valid JSON Schema at type"),
    (json.dumps([1, 2]), "not a JSON Schema (a schema is an object, got list)"),
    ("{oops", "not JSON"),
])
def test_a_file_that_is_not_json_schema_is_one_line(tmp_path, text, message):
    path = tmp_path / "schema.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        load_check(path)
    assert str(path) in exc.value.message and "\n" not in exc.value.message


def test_python_check_keeps_drops_and_names_the_example_when_it_raises(tmp_path):
    path = tmp_path / "check.py"
    path.write_text("import json\n"
                    "def check(example):\n"
                    "    answer = example['messages'][-1]['content']\n"
                    "    if answer == 'boom':\n"
                    "        raise ValueError('cannot read ' + answer)\n"
                    "    return True if json.loads(answer)['quantity'] < 9 else 'too many'\n")
    check = load_check(path)
    assert check(_candidate("q", '{"quantity": 2}').record()) is None
    assert check(_candidate("q", '{"quantity": 9}').record()) == "check: too many"
    boom = _candidate("q", "boom")
    with pytest.raises(UserError, match=f"check\\(\\) raised ValueError: cannot read boom on example {boom.id}"):
        check(boom.record())
    (tmp_path / "nocheck.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="defines no function check"):
        load_check(tmp_path / "nocheck.py")


def test_decontamination_ignores_task_boilerplate_and_catches_leaks():
    held = [(f"t{n}", order(n)[0] + "\n" + order(n)[1]) for n in range(300, 320)]
    index = HeldOutIndex(held, 8, boilerplate=[order(n)[0] for n in range(5)])
    assert index.overlap(order(44)[0] + "\n" + order(44)[1]) is None     # same instruction, another order
    prompt, answer = order(305)
    assert index.overlap("Please do this.\n" + prompt.split("\n")[1] + "\n" + answer) == "t305"   # other instruction
    assert index.overlap(prompt + "\nsomething else entirely") is None                    # 7 varying words only


def test_a_local_model_judges_through_the_same_stage(tiny_model_dir, tmp_path):
    """The judge path with `local:` (our generation engine). A tiny random model gives no usable
    scores, so this checks the plumbing and the accounting, not the judge's accuracy."""
    judge = make_teacher(f"local:{tiny_model_dir}", TeacherSettings(), RequestCache(tmp_path / "c"))
    stage = JudgeStage(judge, 7, load_rubric())
    candidates = [_candidate(*order(n)) for n in range(4)]
    kept = stage.run(candidates)
    assert stage.count.seen == 4 and stage.count.kept == len(kept)
    assert sum(stage.count.dropped.values()) == 4 - len(kept)
    usage = judge.usage["judge"]
    assert usage.requests == 4 and 0 < usage.completion_tokens <= 4 * 64      # the judge's token cap


def test_a_judge_that_gives_no_scores_for_most_candidates_is_a_warning():
    from types import SimpleNamespace

    from tunesmith.synth.run import judge_warnings

    judge = SimpleNamespace(name="local:default")
    stage = JudgeStage(judge, 7, load_rubric())
    stage.count.seen, stage.count.kept = 13, 1
    stage.count.dropped["judge reply had no 1-10 score"] = 12
    assert judge_warnings([NoveltyStage([], 0.7), stage], judge) == [
        "the judge local:default gave no 1-10 score for 12 of 13 candidates: it does not follow the rubric; use a "
        "stronger --judge, or --min-score 0 to keep candidates unjudged"]
    stage.count.dropped["judge reply had no 1-10 score"] = 6                  # half or fewer: the judge works
    assert judge_warnings([stage], judge) == []
    stage.count.seen, stage.count.dropped["judge reply had no 1-10 score"] = 4, 4   # too few to tell
    assert judge_warnings([stage], judge) == [] and judge_warnings([], None) == []


def test_the_example_order_check_keeps_every_gold_order_and_drops_made_up_values():
    """examples/synth/order_check.py (the end-to-end run's --check): no false drop on the 540 real quickstart
    examples; an answer naming a city, colour or quantity the request does not is dropped."""
    import json
    from pathlib import Path

    from tunesmith.synth.checks import load_check

    root = Path(__file__).resolve().parents[2]
    check = load_check(str(root / "examples" / "synth" / "order_check.py"))
    rows = [json.loads(line) for name in ("train.jsonl", "test.jsonl")
            for line in (root / "src" / "tunesmith" / "assets" / "quickstart" / name).read_text().splitlines()]
    assert len(rows) == 540 and all(check(r) is None for r in rows)
    gold = rows[0]
    answer = json.loads(gold["messages"][-1]["content"])
    for key, value in (("city", "New York"), ("color", "white"), ("quantity", answer["quantity"] + 5),
                       ("priority", "soon")):
        made_up = {**gold, "messages": [gold["messages"][0],
                                        {"role": "assistant", "content": json.dumps({**answer, key: value})}]}
        expected = "priority not high or normal" if key == "priority" else f"{key} not in the request"
        assert check(made_up) == f"check: {expected}"
