"""The FastAPI app: thin OpenAI routes over a `ServerState`.

Each route only hands its parsed body to the serving class of its endpoint family and wraps what
comes back (a dict is JSON, an async iterator is an SSE stream):

| routes                                   | class                                     |
|------------------------------------------|-------------------------------------------|
| POST /v1/chat/completions                | serving_chat.ServingChat                  |
| POST /v1/completions                     | serving_completions.ServingCompletions    |
| GET /v1/models, GET /health, /v1/adapters| serving_models.ServingModels              |
| errors of every route                    | error_handlers                            |

The API key and body-size limit sit in front of all of it (`guard.Guard`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tunesmith.serve import error_handlers
from tunesmith.serve.guard import Guard
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest, LoadAdapterRequest
from tunesmith.serve.serving_chat import ServingChat
from tunesmith.serve.serving_completions import ServingCompletions
from tunesmith.serve.serving_models import ServingModels
from tunesmith.serve.state import ServerState


def _respond(result):
    if isinstance(result, dict):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def create_app(state: ServerState) -> Guard:
    """The ASGI app: FastAPI routes behind the Guard. `.app` is the FastAPI app itself."""
    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    error_handlers.install(app)
    chat, completions, models = ServingChat(state), ServingCompletions(state), ServingModels(state)

    @app.get("/health")
    async def health():
        return models.health()

    @app.get("/v1/models")
    async def list_models():
        return models.list_models()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return _respond(await chat.create(body, request.is_disconnected))

    @app.post("/v1/completions")
    async def text_completions(body: CompletionRequest, request: Request):
        return _respond(await completions.create(body, request.is_disconnected))

    @app.post("/v1/adapters")
    async def load_adapter(body: LoadAdapterRequest):
        return await run_in_threadpool(models.load_adapter, body)

    @app.delete("/v1/adapters/{name:path}")
    async def unload_adapter(name: str):
        return await run_in_threadpool(models.unload_adapter, name)

    return Guard(app, state.options.api_key, state.options.max_body_bytes)
