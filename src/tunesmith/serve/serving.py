"""What every generation endpoint shares: model lookup, request limits, the engine job behind one API
call, and turning its events into one JSON answer or a stream of server-sent events.

The endpoint classes (`serving_chat.ServingChat`, `serving_completions.ServingCompletions`) build on
`ServingBase`; they take a `ServerState` and an `is_disconnected` coroutine function instead of a
web request, so they run (and are tested) without a web server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from tunesmith.generation.request import GenRequest
from tunesmith.serve.errors import api_error, bad_request, model_not_found

Disconnected = Callable[[], Awaitable[bool]]
# How often a running request checks whether its client is still there, in seconds.
DISCONNECT_POLL_S = 0.5


class Job:
    """The engine requests behind one API call (prompts x n choices) and the queue their events arrive on.

    Must be created inside a running event loop: the engine thread hands events over through it.
    """

    def __init__(self, state, adapter: str | None, prompts: list[list[int]], body, max_tokens: int):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        sink = lambda event: loop.call_soon_threadsafe(self.queue.put_nowait, event)  # noqa: E731
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.rows = [GenRequest(prompt_ids=p, sink=sink, adapter=adapter, max_tokens=max_tokens,
                                temperature=body.temperature, top_p=body.top_p,
                                seed=None if body.seed is None else body.seed + j, stop=tuple(body.stop or ()),
                                eft_beta=body.eft_beta, check=state.loop_check(adapter),
                                timeout_s=state.options.request_timeout_s, index=i * body.n + j)
                     for i, p in enumerate(prompts) for j in range(body.n)]
        # Set when the client hung up before every choice was final: what was generated is cut short.
        self.disconnected = False
        state.engine.submit(self.rows)

    def cancel(self) -> None:
        for row in self.rows:
            if not row.done:
                row.cancelled.set()

    async def events(self, is_disconnected: Disconnected):
        """Engine events until every choice is final; stops (and cancels) if the client goes away."""
        pending = len(self.rows)
        checked = time.monotonic()
        while pending:
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                event = None
            # Checked on a clock, not only when idle: tokens arriving every few ms must not hide a hang-up.
            if time.monotonic() - checked > DISCONNECT_POLL_S:
                checked = time.monotonic()
                if await is_disconnected():
                    self.disconnected = True
                    self.cancel()
                    return
            if event is None:
                continue
            if event.final:
                pending -= 1
            yield event

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}


def sse(obj) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# chunk(index, text, finish_reason, opening=False, usage=None) -> a chunk dict, or None for nothing to send
ChunkMaker = Callable[..., dict | None]


class ServingBase:
    def __init__(self, state):
        self.state = state

    @property
    def options(self):
        return self.state.options

    def resolve_model(self, name: str, org: str | None = None) -> str | None:
        """The adapter the model id names (None for the base); 404 when there is none, or when it is
        another organization's fine-tuned model."""
        try:
            return self.state.lookup(name, org)
        except KeyError:
            raise model_not_found(name, self.state.model_names(org)) from None

    def max_tokens(self, body, prompt_lengths: list[int], explicit: int | None) -> int:
        """The token budget of every choice; a 400 for what this server will not do or cannot fit."""
        opts, context = self.options, self.state.max_context
        if (what := body.unsupported()):
            raise bad_request(f"{what} is not supported by this server")
        if body.n > opts.max_n:
            raise bad_request(f"n={body.n} is over this server's limit of {opts.max_n}", "n")
        if explicit is not None and explicit > opts.max_tokens_limit:
            raise bad_request(f"max_tokens={explicit} is over this server's limit of {opts.max_tokens_limit}", "max_tokens")
        longest = max(prompt_lengths)
        room = context - longest
        if room < 1:
            raise bad_request(f"the prompt has {longest} tokens; the model's context is {context}", "messages")
        if explicit is not None and explicit > room:
            raise bad_request(f"prompt ({longest} tokens) + max_tokens ({explicit}) exceeds the model's context of "
                              f"{context} tokens", "max_tokens")
        return min(explicit or opts.default_max_tokens, room, opts.max_tokens_limit)

    @staticmethod
    async def collect(job: Job, is_disconnected: Disconnected, n_choices: int):
        """(texts, finish reasons, completion tokens) per choice; the first error is raised as an APIError."""
        texts, reasons, tokens = [""] * n_choices, [None] * n_choices, [0] * n_choices
        try:
            async for event in job.events(is_disconnected):
                if event.error is not None:
                    raise api_error(event.error)
                texts[event.index] += event.text
                if event.final:
                    reasons[event.index], tokens[event.index] = event.finish_reason, event.completion_tokens
        finally:
            job.cancel()
        return texts, reasons, tokens

    @staticmethod
    async def stream(job: Job, is_disconnected: Disconnected, n_choices: int, make_chunk: ChunkMaker,
                     include_usage: bool, on_done=None) -> AsyncIterator[str]:
        """Server-sent events: an opening chunk per choice (if `make_chunk` gives one), a chunk per text
        delta and per finish, an error event if one comes, the usage chunk if asked for, then [DONE].
        `on_done(texts, reasons, tokens)` runs after [DONE] when every choice finished."""
        texts, tokens = [""] * n_choices, [0] * n_choices
        reasons = [None] * n_choices
        try:
            for i in range(n_choices):
                first = make_chunk(i, None, None, opening=True)
                if first:
                    yield sse(first)
            async for event in job.events(is_disconnected):
                if event.error is not None:
                    yield sse(api_error(event.error).body())
                    return
                if event.text:
                    texts[event.index] += event.text
                    yield sse(make_chunk(event.index, event.text, None))
                if event.final:
                    tokens[event.index], reasons[event.index] = event.completion_tokens, event.finish_reason
                    yield sse(make_chunk(event.index, None, event.finish_reason))
            if include_usage:
                yield sse(make_chunk(None, None, None, usage=job.usage(sum(tokens))))
            yield "data: [DONE]\n\n"
            if on_done:
                on_done(texts, reasons, tokens)
        finally:
            # Runs on normal end and when the client disconnects (the generator is closed): free the rows.
            job.cancel()
