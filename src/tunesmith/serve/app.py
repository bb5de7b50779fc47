"""The FastAPI app: OpenAI routes over a `ServerState`.

Routes only translate: body -> GenRequests for the engine, engine events -> OpenAI JSON or SSE.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import UserError
from tunesmith.serve.errors import APIError, bad_request, error_body, model_not_found
from tunesmith.serve.guard import Guard
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest, LoadAdapterRequest
from tunesmith.serve.request import GenRequest
from tunesmith.serve.state import ServerState
from tunesmith.serve.traffic import utc_now

ROLE_MAP = {"developer": "system"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    field = ".".join(loc) or None
    return (f"{field}: {first.get('msg', 'invalid request')}" if field else first.get("msg", "invalid request body")), field


class _Job:
    """The engine requests behind one API call and the queue their events arrive on."""

    def __init__(self, state: ServerState, adapter: str | None, prompts: list[list[int]], body, max_tokens: int):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        sink = lambda event: loop.call_soon_threadsafe(self.queue.put_nowait, event)  # noqa: E731
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.rows = [GenRequest(prompt_ids=p, sink=sink, adapter=adapter, max_tokens=max_tokens,
                                temperature=body.temperature, top_p=body.top_p,
                                seed=None if body.seed is None else body.seed + j, stop=tuple(body.stop or ()),
                                timeout_s=state.options.request_timeout_s, index=i * body.n + j)
                     for i, p in enumerate(prompts) for j in range(body.n)]
        # Set when the client hung up before every choice was final: what was generated is cut short.
        self.disconnected = False
        state.engine.submit(self.rows)

    def cancel(self) -> None:
        for row in self.rows:
            if not row.done:
                row.cancelled.set()

    async def events(self, request: Request):
        """Engine events until every choice is final; stops (and cancels) if the client goes away."""
        pending = len(self.rows)
        checked = time.monotonic()
        while pending:
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                event = None
            # Checked on a clock, not only when idle: tokens arriving every few ms must not hide a hang-up.
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if await request.is_disconnected():
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


def create_app(state: ServerState) -> FastAPI:
    opts = state.options
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, field = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", "invalid_request", field), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None), status_code=exc.status_code)

    @app.exception_handler(UserError)
    async def _user(request, exc: UserError):
        return JSONResponse(error_body(str(exc), "invalid_request_error", "invalid_adapter"), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        # Starlette re-raises after this response is sent, so uvicorn still logs the traceback server-side;
        # the client gets the OpenAI error shape (its SDK parses it) and no internals beyond the type.
        return JSONResponse(error_body(f"Internal server error ({type(exc).__name__}); the server log has the details.",
                                       "server_error", "internal_error"), status_code=500)

    # -- helpers ---------------------------------------------------------------------------------------
    def resolve_model(name: str) -> str | None:
        try:
            return state.lookup(name)
        except KeyError:
            raise model_not_found(name, state.model_names()) from None

    def check_common(body, prompt_lengths: list[int], explicit: int | None) -> int:
        if (what := body.unsupported()):
            raise bad_request(f"{what} is not supported by this server")
        if body.n > opts.max_n:
            raise bad_request(f"n={body.n} is over this server's limit of {opts.max_n}", "n")
        if explicit is not None and explicit > opts.max_tokens_limit:
            raise bad_request(f"max_tokens={explicit} is over this server's limit of {opts.max_tokens_limit}", "max_tokens")
        longest = max(prompt_lengths)
        room = state.max_context - longest
        if room < 1:
            raise bad_request(f"the prompt has {longest} tokens; the model's context is {state.max_context}", "messages")
        if explicit is not None and explicit > room:
            raise bad_request(f"prompt ({longest} tokens) + max_tokens ({explicit}) exceeds the model's context of "
                              f"{state.max_context} tokens", "max_tokens")
        return min(explicit or opts.default_max_tokens, room, opts.max_tokens_limit)

    async def collect(job: _Job, request: Request, n_choices: int):
        texts, reasons, tokens = [""] * n_choices, [None] * n_choices, [0] * n_choices
        try:
            async for event in job.events(request):
                if event.error is not None:
                    raise event.error
                texts[event.index] += event.text
                if event.final:
                    reasons[event.index], tokens[event.index] = event.finish_reason, event.completion_tokens
        finally:
            job.cancel()
        return texts, reasons, tokens

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def stream(job: _Job, request: Request, n_choices: int, make_chunk, include_usage: bool, on_done=None):
        async def gen():
            texts, tokens = [""] * n_choices, [0] * n_choices
            reasons = [None] * n_choices
            try:
                for i in range(n_choices):
                    first = make_chunk(i, None, None, opening=True)
                    if first:
                        yield sse(first)
                async for event in job.events(request):
                    if event.error is not None:
                        err = event.error
                        yield sse(err.body() if isinstance(err, APIError) else error_body(str(err), "server_error"))
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
                # Runs on normal end and when the client disconnects (the task is cancelled): free the rows.
                job.cancel()
        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # -- routes ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "engine": state.engine.load(), "models": len(state.model_names())}

    @app.get("/v1/models")
    async def models():
        created = int(state.started)
        data = [{"id": state.base_name, "object": "model", "created": created, "owned_by": "tunesmith",
                 "root": str(state.base_path), "parent": None}]
        for name in state.model_names()[1:]:
            spec = state.adapters.get(name)
            if spec is not None:
                data.append({"id": name, "object": "model", "created": created, "owned_by": "tunesmith",
                             "root": str(spec.path), "parent": state.base_name, "method": spec.method,
                             "engine": spec.engine})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        from tunesmith.data.tokenize import prompt_ids

        adapter = resolve_model(body.model)
        messages = [{"role": ROLE_MAP.get(m.role, m.role), "content": m.text()} for m in body.messages]
        try:
            ids = prompt_ids(state.tokenizer, messages)
        except Exception as exc:  # jinja errors from the model's own template are the request's fault
            raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from None
        explicit = body.max_completion_tokens or body.max_tokens
        max_tokens = check_common(body, [len(ids)], explicit)
        started = utc_now()
        job = _Job(state, adapter, [ids], body, max_tokens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def log_traffic(texts, reasons, tokens):
            # The log is training data: a choice cut short (hang-up, timeout, error) has no finish_reason
            # and would teach truncated answers, so only completed choices of a completed call are written.
            if state.traffic is None or job.disconnected:
                return
            for i, text in enumerate(texts):
                if reasons[i] is None:
                    continue
                state.traffic.write(messages=messages, answer=text, model=body.model, adapter=adapter, started=started,
                                    finish_reason=reasons[i], usage=job.usage(tokens[i]) | {"choice": i},
                                    request_id=rid)

        if body.stream:
            def chunk(index, text, reason, opening=False, usage=None):
                base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}
                if usage is not None:
                    return base | {"choices": [], "usage": usage}
                delta = {"role": "assistant", "content": ""} if opening else ({"content": text} if text else {})
                return base | {"choices": [{"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}]}
            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream(job, request, body.n, chunk, include, on_done=log_traffic)

        texts, reasons, tokens = await collect(job, request, body.n)
        log_traffic(texts, reasons, tokens)
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": reasons[i],
                             "logprobs": None} for i, t in enumerate(texts)],
                "usage": job.usage(sum(tokens))}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = resolve_model(body.model)
        vocab = len(state.tokenizer)
        if isinstance(body.prompt, str):
            prompts = [state.tokenizer(body.prompt)["input_ids"]]
        elif body.prompt and all(isinstance(p, int) for p in body.prompt):
            if any(not 0 <= t < vocab for t in body.prompt):
                raise bad_request(f"prompt token ids must be in [0, {vocab})", "prompt")
            prompts = [list(body.prompt)]
        elif body.prompt:
            prompts = [state.tokenizer(p)["input_ids"] for p in body.prompt]
        else:
            raise bad_request("prompt must not be empty", "prompt")
        if any(not p for p in prompts):
            raise bad_request("prompt must not be empty", "prompt")
        max_tokens = check_common(body, [len(p) for p in prompts], body.max_tokens)
        job = _Job(state, adapter, prompts, body, max_tokens)
        n_choices = len(prompts) * body.n
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        if body.stream:
            def chunk(index, text, reason, opening=False, usage=None):
                if opening:
                    return None
                base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
                if usage is not None:
                    return base | {"choices": [], "usage": usage}
                return base | {"choices": [{"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}]}
            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream(job, request, n_choices, chunk, include)

        texts, reasons, tokens = await collect(job, request, n_choices)
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": i, "text": t, "finish_reason": reasons[i], "logprobs": None}
                            for i, t in enumerate(texts)],
                "usage": job.usage(sum(tokens))}

    @app.post("/v1/adapters")
    async def load_adapter(body: LoadAdapterRequest):
        if body.name in state.model_names():
            raise APIError(409, f"A model named '{body.name}' is already loaded; DELETE it first.",
                           "invalid_request_error", "model_exists", "name")
        path = state.policy.check(body.path)
        spec = await run_in_threadpool(state.load_adapter, body.name, path)
        return {"id": spec.name, "object": "model", "created": int(time.time()), "owned_by": "tunesmith",
                "root": str(spec.path), "parent": state.base_name, "method": spec.method, "engine": spec.engine}

    @app.delete("/v1/adapters/{name:path}")
    async def unload_adapter(name: str):
        if name == state.base_name:
            raise bad_request("the base model cannot be unloaded", "name")
        if name not in state.adapters:
            raise model_not_found(name, state.model_names())
        await run_in_threadpool(state.unload_adapter, name)
        return {"id": name, "object": "model", "deleted": True}

    return Guard(app, opts.api_key, opts.max_body_bytes)
