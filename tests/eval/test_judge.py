"""Pairwise judging: each pair in both orders, inconsistent verdicts are ties, win rate with ties as half.

The judges are real: an OpenAI-compatible HTTP server started in the test (answering by a fixed
rule, so the expected verdicts are known) reached through the `openai` client, and a tiny local
causal LM whose logits decide.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request

from tunesmith.errors import ConfigError
from tunesmith.eval import stats
from tunesmith.eval.judge import (
    DEFAULT_PROMPT,
    LocalJudge,
    OpenAIJudge,
    combine,
    load_prompt,
    make_judge,
    pairwise,
    parse_verdict,
    summarize,
)


def answers(prompt: str) -> tuple[str, str]:
    a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", prompt, re.S).group(1)
    b = re.search(r"\[Answer B\]\n(.*?)\n\nReply", prompt, re.S).group(1)
    return a, b


RULES = {
    # Always the first answer: the classic position bias. Every pair must come out a tie.
    "first": lambda a, b: "A",
    # Content-based and order-independent: the answer mentioning Paris wins; else a stubborn "B".
    "paris": lambda a, b: "A" if "Paris" in a and "Paris" not in b else "B",
    "chatty": lambda a, b: "I think the better one is B, clearly.",
}


@pytest.fixture(scope="module")
def judge_server():
    app = FastAPI()
    calls = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        calls.append(body)
        reply = RULES[body["model"]](*answers(prompt))
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", calls
    server.should_exit = True
    thread.join(timeout=10)


QUESTIONS = ["Capital of France?", "Capital of France, one word?", "Where is the Louvre?", "Name a city."]
TUNED = ["Paris", "Paris.", "In Paris", "Lyon"]
BASE = ["London", "Paris", "Rome", "Berlin"]


def test_position_biased_judge_gives_all_ties(judge_server):
    url, calls = judge_server
    before = len(calls)
    verdicts = pairwise(OpenAIJudge("first", base_url=url), QUESTIONS, TUNED, BASE)
    assert len(calls) - before == 2 * len(QUESTIONS)  # both orders, every pair
    assert [(v.first, v.second, v.outcome) for v in verdicts] == [("A", "A", "tie")] * 4
    summary = summarize(verdicts)
    assert summary["win_rate"] == 0.5 and summary["ties"] == 4 and summary["inconsistent"] == 4
    # The two orders really were swapped: the second call shows the tuned answer as B.
    assert answers(calls[before]["messages"][-1]["content"]) == (TUNED[0], BASE[0])
    assert answers(calls[before + 1]["messages"][-1]["content"]) == (BASE[0], TUNED[0])
    assert calls[before]["temperature"] == 0.0


def test_consistent_judge_counts_wins_losses_and_ties(judge_server):
    url, _ = judge_server
    verdicts = pairwise(OpenAIJudge("paris", base_url=url), QUESTIONS, TUNED, BASE)
    # 1: Paris only in tuned -> A then B -> win. 2: Paris in both -> B, B -> inconsistent -> tie.
    # 3: win. 4: neither -> B, B -> tie.
    assert [v.outcome for v in verdicts] == ["win", "tie", "win", "tie"]
    summary = summarize(verdicts)
    assert summary["win_rate"] == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)
    assert (summary["wins"], summary["ties"], summary["losses"], summary["inconsistent"]) == (2, 2, 0, 2)
    lo, hi = summary["win_rate_ci95"]
    assert (lo, hi) == tuple(stats.bootstrap_interval([1, 0.5, 1, 0.5]))
    assert lo <= summary["win_rate"] <= hi
    # Swapping which system is the candidate mirrors every outcome.
    mirrored = pairwise(OpenAIJudge("paris", base_url=url), QUESTIONS, BASE, TUNED)
    assert [v.outcome for v in mirrored] == ["loss", "tie", "loss", "tie"]


def test_free_text_replies_are_parsed(judge_server):
    url, _ = judge_server
    judge = make_judge("openai:chatty", base_url=url)
    assert judge.verdict(load_prompt().format(question="q", reference="", answer_a="x", answer_b="y")) == "B"
    assert [parse_verdict(t) for t in ["A", "b.", "Tie", "Answer: A", "neither", "", "BA"]] == \
        ["A", "B", "tie", "A", "tie", "tie", "tie"]


def test_combine_table():
    assert combine("A", "B") == "win"
    assert combine("B", "A") == "loss"
    for first, second in [("A", "A"), ("B", "B"), ("tie", "B"), ("A", "tie"), ("tie", "tie")]:
        assert combine(first, second) == "tie"


def test_local_judge_verdicts_follow_its_logits(tiny_model_dir, tokenizer):
    from tunesmith.models import load_model

    judge = LocalJudge(load_model(str(tiny_model_dir)).eval(), tokenizer)
    verdicts = pairwise(judge, QUESTIONS, TUNED, BASE)
    template = load_prompt()
    for q, t, b, v in zip(QUESTIONS, TUNED, BASE, verdicts):
        first = judge.verdict(template.format(question=q, reference="", answer_a=t, answer_b=b))
        second = judge.verdict(template.format(question=q, reference="", answer_a=b, answer_b=t))
        assert (v.first, v.second) == (first, second)  # deterministic
        assert v.outcome == combine(first, second)
    summary = summarize(verdicts)
    assert summary["wins"] + summary["ties"] + summary["losses"] == 4
    assert summary["win_rate"] == pytest.approx((summary["wins"] + 0.5 * summary["ties"]) / 4)


def test_judge_prompt_file_is_replaceable_and_checked(tmp_path, judge_server):
    url, calls = judge_server
    mine = tmp_path / "judge.md"
    mine.write_text("Which is better?\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\nReply A or B.")
    pairwise(OpenAIJudge("first", base_url=url), ["q"], ["x"], ["y"], prompt=load_prompt(mine))
    assert calls[-1]["messages"][-1]["content"].startswith("Which is better?")
    bad = tmp_path / "bad.md"
    bad.write_text("Compare {answer_a} with {answer_c}")
    with pytest.raises(ConfigError, match="answer_b"):
        load_prompt(bad)
    bad.write_text("Compare {answer_a} and {answer_b} for {user}")
    with pytest.raises(ConfigError, match="bad placeholder"):
        load_prompt(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_prompt(tmp_path / "missing.md")
    with pytest.raises(ConfigError, match="KIND:MODEL"):
        make_judge("gpt-4")
    assert DEFAULT_PROMPT.is_file()


# Replies as judges write them; the article "a" and prose mentioning both answers must not become verdicts.
REPLIES = [
    ("A", "A"), ("B", "B"), ("tie", "tie"), ("Tie.", "tie"), ("b.", "B"), ("a", "A"), ("**B**", "B"), ("A.", "A"),
    ("It is a tie.", "tie"), ("a tie", "tie"), ("A tie.", "tie"), ("Verdict: a tie", "tie"),
    ("Answer A is better.", "A"), ("A is better.", "A"), ("The better answer is B, clearly.", "B"),
    ("The answer is a bit long; B wins.", "B"),
    ("Verdict: B", "B"), ("verdict: b", "B"), ("**Verdict:** A", "A"), ("Winner - B", "B"), ("Final answer: tie", "tie"),
    ("Answer A is more accurate but B is clearer.\nVerdict: B", "B"),     # the labelled final line decides
    ("Verdict: A\n\nExplanation: B misses the point.", "A"),
    ("Final verdict: [[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"),      # MT-Bench markers, C is its tie
    ("Both answers are equally good.", "tie"), ("Neither is correct.", "tie"),
    ("A and B are both wrong", "tie"), ("I'd pick B over A.", "tie"),    # names both: ambiguous, so a tie
    ("Both are fine, but overall B.", "tie"), ("", "tie"), ("BA", "tie"), ("I cannot decide.", "tie"),
]


@pytest.mark.parametrize("reply,expected", REPLIES)
def test_parse_verdict_on_real_looking_replies(reply, expected):
    assert parse_verdict(reply) == expected


def test_openai_judge_without_the_package_is_a_config_error(monkeypatch):
    from tunesmith.eval.judge import check_judge

    assert check_judge("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ConfigError) as exc:
        check_judge("openai:gpt-4o-mini")
    assert exc.value.message == "eval.judge: the openai judge needs the openai package, which is not installed"
    assert "pip install openai" in exc.value.hint
    assert check_judge("local:default") == ("local", "default")  # the local judge needs nothing extra
