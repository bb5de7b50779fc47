"""Teachers against a real HTTP server through the `openai` client: retries on 429/500, no retry on
400, the rate limit, token accounting, the request cache, an unreachable endpoint, a local model."""

from __future__ import annotations

import time

import pytest

from tunesmith.errors import UserError
from tunesmith.synth.cache import RequestCache
from tunesmith.synth.teacher import Pricing, TeacherSettings, make_teacher


def _settings(**kw) -> TeacherSettings:
    return TeacherSettings(**{"backoff_seconds": 0.01, "concurrency": 4, **kw})


def _convs(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question number {i}"}] for i in range(n)]


def test_retries_429_and_500_then_counts_tokens_and_cost(teacher, tmp_path):
    scripted, url = teacher
    t = make_teacher("openai:scripted", _settings(pricing=Pricing(1.0, 2.0)), RequestCache(tmp_path / "c"), base_url=url)
    t.check()
    replies = t.chat_many(_convs(24), stage="s")
    assert [r.text for r in replies] == [f"TEACHER ANSWER: QUESTION NUMBER {i}" for i in range(24)]
    injected = scripted.failures["429"] + scripted.failures["500"]
    assert injected > 0 and scripted.attempts == 24 + injected
    u = t.usage["s"]
    assert (u.requests, u.cached, u.failed, u.retries) == (24, 0, 0, injected)
    # The server's own usage numbers, summed.
    assert u.prompt_tokens == 24 * 3 and u.completion_tokens == 24 * 5
    assert u.cost == pytest.approx((72 * 1.0 + 120 * 2.0) / 1000)


def test_the_cache_answers_a_rerun_without_asking(teacher, tmp_path):
    scripted, url = teacher
    cache = RequestCache(tmp_path / "c")
    first = make_teacher("openai:scripted", _settings(), cache, base_url=url).chat_many(_convs(6), stage="s")
    asked = sum(scripted.served.values())
    again = make_teacher("openai:scripted", _settings(), RequestCache(tmp_path / "c"), base_url=url)
    second = again.chat_many(_convs(8), stage="s")
    assert [r.text for r in second[:6]] == [r.text for r in first]
    assert sum(scripted.served.values()) == asked + 2 and max(scripted.served.values()) == 1
    assert (again.usage["s"].cached, again.usage["s"].requests) == (6, 2)
    # Another sampling setting is another request.
    other = make_teacher("openai:scripted", _settings(temperature=0.0), cache, base_url=url)
    other.chat_many(_convs(1), stage="s")
    assert other.usage["s"].requests == 1


def test_a_request_the_server_rejects_is_not_retried(teacher, tmp_path):
    scripted, url = teacher
    t = make_teacher("openai:no-such-model", _settings(), RequestCache(None), base_url=url.replace("/v1", "/v2"))
    [reply] = t.chat_many(_convs(1), stage="s")
    assert reply.text is None and reply.error.startswith("HTTP 404")
    assert t.usage["s"].failed == 1 and t.usage["s"].retries == 0


def test_persistent_failures_give_up_after_max_retries_and_are_not_cached(teacher, tmp_path):
    scripted, url = teacher
    convs = [[{"role": "user", "content": "ALWAYS-500 please"}], *_convs(2)]
    t = make_teacher("openai:scripted", _settings(max_retries=2), RequestCache(tmp_path / "c"), base_url=url)
    replies = t.chat_many(convs, stage="s")
    assert replies[0].text is None and "InternalServerError" in replies[0].error and "after 2 retries" in replies[0].error
    assert all(r.text for r in replies[1:])
    assert t.usage["s"].failed == 1 and t.usage["s"].retries >= 2
    assert len(list((tmp_path / "c").glob("*/*.json"))) == 2   # the failure is asked again next time


def test_rate_limit_spaces_requests(teacher, tmp_path):
    scripted, url = teacher
    scripted.fail = False
    t = make_teacher("openai:scripted", _settings(requests_per_minute=600, concurrency=4), RequestCache(None), base_url=url)
    start = time.monotonic()
    t.chat_many(_convs(6), stage="s")
    assert time.monotonic() - start >= 0.5   # 6 starts, 0.1 s apart


def test_an_unreachable_teacher_is_one_line_before_any_work(tmp_path):
    from tunesmith.serve.server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    t = make_teacher("openai:x", _settings(), RequestCache(None), base_url=url)
    with pytest.raises(UserError, match=f"teacher {url} is unreachable") as exc:
        t.check()
    assert "\n" not in exc.value.message
    with pytest.raises(UserError, match="is not KIND:MODEL"):
        make_teacher("gpt-4o", _settings(), RequestCache(None))


def test_local_teacher_generates_through_our_engine(tiny_model_dir, tmp_path):
    t = make_teacher(f"local:{tiny_model_dir}", _settings(max_tokens=6, temperature=0.0), RequestCache(tmp_path / "c"))
    t.check()
    replies = t.chat_many(_convs(3), stage="s")
    assert all(isinstance(r.text, str) for r in replies)
    assert t.usage["s"].requests == 3 and t.usage["s"].completion_tokens > 0 and t.usage["s"].prompt_tokens > 3 * 3
    again = make_teacher(f"local:{tiny_model_dir}", _settings(max_tokens=6, temperature=0.0), RequestCache(tmp_path / "c"))
    assert [r.text for r in again.chat_many(_convs(3), stage="s")] == [r.text for r in replies]
    assert again.usage["s"].cached == 3 and again._loaded is None   # nothing asked: the model never loaded


def test_the_same_request_twice_in_one_call_is_asked_once(teacher, tmp_path):
    scripted, url = teacher
    t = make_teacher("openai:scripted", _settings(), RequestCache(tmp_path / "c"), base_url=url)
    replies = t.chat_many(_convs(2) + _convs(2), stage="s")
    assert [r.text for r in replies[2:]] == [r.text for r in replies[:2]]
    assert sum(scripted.served.values()) == 2 and (t.usage["s"].requests, t.usage["s"].cached) == (2, 2)
