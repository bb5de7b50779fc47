"""The per-endpoint serving classes and error handlers, called directly: no web server, no model.

A fake engine answers every submitted row with a scripted list of events, so the OpenAI response
and SSE shapes are checked exactly, including errors raised by the engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunesmith.generation.errors import QueueFull, RequestTimedOut
from tunesmith.generation.request import Event
from tunesmith.serve.errors import APIError, api_error
from tunesmith.serve.options import ServeOptions
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest, LoadAdapterRequest


class FakeEngine:
    """Answers each row with `script(row)`: a list of (text, finish_reason, error) events."""

    def __init__(self, script):
        self.script = script
        self.rows = []

    def submit(self, rows):
        self.rows += rows
        for row in rows:
            for text, reason, error in self.script(row):
                row.sink(Event(row.index, text, reason, completion_tokens=3 if reason else 0, error=error))

    def load(self):
        return {"running": 0, "waiting": 0}


def fake_state(tokenizer, script, **options):
    adapters = {"ad": SimpleNamespace(name="ad", path=Path("/runs/ad"), method="lora", engine="lora")}
    names = ["base", *adapters]
    return SimpleNamespace(options=ServeOptions(model="base", **options), tokenizer=tokenizer, engine=FakeEngine(script),
                           max_context=64, traffic=None, base_name="base", base_path=Path("/models/base"), started=1.0,
                           adapters=adapters, owners={}, model_names=lambda org=None: list(names),
                           loop_check=lambda adapter: None,
                           lookup=lambda n, org=None: None if n == "base" else (n if n in adapters else (_ for _ in ()).throw(KeyError(n))))


async def still_there() -> bool:
    return False


def hello(row):
    return [("Hel", None, None), ("lo", None, None), ("", "stop", None)]


def run(coro):
    return asyncio.run(coro)


async def _drain(stream) -> list:
    return [line async for line in stream]


def test_chat_answer_shape_and_usage(tokenizer):
    from tunesmith.serve.serving_chat import ServingChat

    state = fake_state(tokenizer, hello)
    body = ChatCompletionRequest(model="ad", messages=[{"role": "developer", "content": "Be brief."},
                                                       {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], n=2)
    answer = run(ServingChat(state).create(body, still_there))
    assert answer["object"] == "chat.completion" and answer["model"] == "ad" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [{"index": i, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop",
                                  "logprobs": None} for i in range(2)]
    rows = state.engine.rows
    assert [r.adapter for r in rows] == ["ad", "ad"] and rows[0].max_tokens == 64 - len(rows[0].prompt_ids)
    prompt = len(rows[0].prompt_ids)
    assert answer["usage"] == {"prompt_tokens": prompt, "completion_tokens": 6, "total_tokens": prompt + 6}
    # developer -> system, text parts joined: the template saw what the client meant.
    assert ServingChat(state).messages(body)[0] == {"role": "system", "content": "Be brief."}


def test_chat_stream_chunks(tokenizer):
    from tunesmith.serve.serving_chat import ServingChat

    body = ChatCompletionRequest(model="base", messages=[{"role": "user", "content": "Hi"}], stream=True, max_tokens=5,
                                 stream_options={"include_usage": True})
    lines = run(_drain_chat(ServingChat(fake_state(tokenizer, hello)), body))
    assert lines[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert [c["choices"][0]["delta"] if c["choices"] else None for c in chunks] == \
        [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {}, None]
    assert [c["choices"][0]["finish_reason"] if c["choices"] else None for c in chunks] == [None, None, None, "stop", None]
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1


async def _drain_chat(serving, body):
    return await _drain(await serving.create(body, still_there))


def test_engine_errors_become_openai_errors(tokenizer):
    from tunesmith.serve.serving_chat import ServingChat
    from tunesmith.serve.serving_completions import ServingCompletions

    late = fake_state(tokenizer, lambda row: [("", None, RequestTimedOut(2.0))])
    with pytest.raises(APIError) as info:
        run(ServingChat(late).create(ChatCompletionRequest(model="base", messages=[{"role": "user", "content": "x"}]),
                                     still_there))
    assert (info.value.status, info.value.type, info.value.code) == (504, "timeout", "timeout")
    body = CompletionRequest(model="base", prompt="x", stream=True)
    lines = run(_drain_chat(ServingCompletions(late), body))
    assert json.loads(lines[-1][len("data: "):]) == {"error": {"message": "The request timed out after 2 s.",
                                                               "type": "timeout", "param": None, "code": "timeout"}}
    full = api_error(QueueFull(4))
    assert (full.status, full.type, full.code) == (429, "rate_limit_exceeded", "queue_full")
    assert api_error(ValueError("boom")).body() == {"error": {"message": "boom", "type": "server_error", "param": None,
                                                              "code": None}}


def test_completion_prompts_and_choices(tokenizer):
    from tunesmith.serve.serving_completions import ServingCompletions

    serving = ServingCompletions(fake_state(tokenizer, hello))
    assert serving.prompts(CompletionRequest(model="base", prompt=[5, 6, 7])) == [[5, 6, 7]]
    assert len(serving.prompts(CompletionRequest(model="base", prompt=["a b", "c"]))) == 2
    for prompt, message in [([len(tokenizer)], "prompt token ids must be in"), ("", "prompt must not be empty"),
                            ([], "prompt must not be empty")]:
        with pytest.raises(APIError) as info:
            serving.prompts(CompletionRequest(model="base", prompt=prompt))
        assert info.value.status == 400 and info.value.param == "prompt" and message in info.value.message
    answer = run(serving.create(CompletionRequest(model="base", prompt=["a", "b"], n=2), still_there))
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3] and {c["text"] for c in answer["choices"]} == {"Hello"}
    assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] == 12
    assert [r.max_tokens for r in serving.state.engine.rows] == [16] * 4       # OpenAI's default for completions


@pytest.mark.parametrize("changes, explicit, param, message", [
    ({"n": 3}, None, "n", "n=3 is over this server's limit of 2"),
    ({}, 33, "max_tokens", "max_tokens=33 is over this server's limit of 32"),
    ({}, 30, "max_tokens", "prompt (40 tokens) + max_tokens (30) exceeds the model's context of 64 tokens"),
    ({"logprobs": True}, None, None, "logprobs is not supported by this server"),
])
def test_request_limits(tokenizer, changes, explicit, param, message):
    from tunesmith.serve.serving import ServingBase

    serving = ServingBase(fake_state(tokenizer, hello, max_n=2, max_tokens_limit=32, default_max_tokens=10))
    body = CompletionRequest(model="base", prompt="x", **changes)
    with pytest.raises(APIError) as info:
        serving.max_tokens(body, [40], explicit)
    assert info.value.status == 400 and info.value.param == param and info.value.message == message
    assert serving.max_tokens(CompletionRequest(model="base", prompt="x"), [40], None) == 10
    assert serving.max_tokens(CompletionRequest(model="base", prompt="x"), [60], None) == 4     # what the context leaves
    with pytest.raises(APIError) as info:
        serving.resolve_model("nope")
    assert info.value.status == 404 and "Available: base, ad" in info.value.message


def test_model_table(tokenizer):
    from tunesmith.serve.serving_models import ServingModels

    models = ServingModels(fake_state(tokenizer, hello))
    assert models.list_models() == {"object": "list", "data": [
        {"id": "base", "object": "model", "created": 1, "owned_by": "tunesmith", "root": "/models/base", "parent": None},
        {"id": "ad", "object": "model", "created": 1, "owned_by": "tunesmith", "root": "/runs/ad", "parent": "base",
         "method": "lora", "engine": "lora"}]}
    assert models.health() == {"status": "ok", "engine": {"running": 0, "waiting": 0}, "models": 2}
    for name, status in [("base", 400), ("gone", 404)]:
        with pytest.raises(APIError) as info:
            models.unload_adapter(name)
        assert info.value.status == status
    with pytest.raises(APIError) as info:
        models.load_adapter(LoadAdapterRequest(name="ad", path="x"))
    assert (info.value.status, info.value.code, info.value.param) == (409, "model_exists", "name")


def test_validation_message_names_the_field():
    from tunesmith.serve.error_handlers import validation_message

    assert validation_message([{"loc": ("body", "messages", 0, "role"), "msg": "Input should be 'user'"}]) == \
        ("messages.0.role: Input should be 'user'", "messages.0.role")
    assert validation_message([{"loc": ("body",), "msg": "JSON decode error"}]) == ("JSON decode error", None)
    assert validation_message([]) == ("invalid request body", None)
