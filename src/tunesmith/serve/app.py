"""The FastAPI app: thin OpenAI routes over a `ServerState`.

Each route only hands its parsed body to the serving class of its endpoint family and wraps what
comes back (a dict is JSON, an async iterator is an SSE stream):

| routes                                   | class                                     |
|------------------------------------------|-------------------------------------------|
| POST /v1/chat/completions                | serving_chat.ServingChat                  |
| POST /v1/completions                     | serving_completions.ServingCompletions    |
| GET /v1/models, GET /health, /v1/adapters| serving_models.ServingModels              |
| /v1/files                                | serving_files.ServingFiles                |
| /v1/fine_tuning/jobs                     | serving_jobs.ServingJobs                  |
| errors of every route                    | error_handlers                            |

The API keys (each naming an organization) and the body-size limits sit in front of all of it
(`guard.Guard`); a route reads the request's organization with `org(request)`.
"""

from __future__ import annotations

from fastapi import Body, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse

from tunesmith.serve import error_handlers
from tunesmith.serve.errors import APIError
from tunesmith.serve.finetune.service import LOCAL_ORG, org_keys
from tunesmith.serve.guard import ORG_SCOPE_KEY, Guard
from tunesmith.serve.protocol import ChatCompletionRequest, CompletionRequest, LoadAdapterRequest
from tunesmith.serve.serving_chat import ServingChat
from tunesmith.serve.serving_completions import ServingCompletions
from tunesmith.serve.serving_files import ServingFiles
from tunesmith.serve.serving_jobs import ServingJobs
from tunesmith.serve.serving_models import ServingModels
from tunesmith.serve.state import ServerState


def _respond(result):
    if isinstance(result, dict):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def org(request: Request) -> str:
    return request.scope.get(ORG_SCOPE_KEY, LOCAL_ORG)


# Multipart framing around an upload of exactly --max-upload-bytes.
UPLOAD_OVERHEAD = 1 << 20


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
    async def list_models(request: Request):
        return models.list_models(org(request))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return _respond(await chat.create(body, request.is_disconnected, org(request)))

    @app.post("/v1/completions")
    async def text_completions(body: CompletionRequest, request: Request):
        return _respond(await completions.create(body, request.is_disconnected, org(request)))

    @app.post("/v1/adapters")
    async def load_adapter(body: LoadAdapterRequest):
        return await run_in_threadpool(models.load_adapter, body)

    @app.delete("/v1/adapters/{name:path}")
    async def unload_adapter(name: str, request: Request):
        return await run_in_threadpool(models.unload_adapter, name, org(request))

    add_finetuning_routes(app, state)
    options = state.options
    return Guard(app, org_keys(options), options.max_body_bytes,
                 body_limits={"/v1/files": options.max_upload_bytes + UPLOAD_OVERHEAD})


def add_finetuning_routes(app: FastAPI, state: ServerState) -> None:
    """/v1/files and /v1/fine_tuning/jobs (404 with a hint when the server runs without --data-dir)."""
    files, jobs = ServingFiles(state), ServingJobs(state)

    def service_on() -> None:
        if state.finetune is None:
            raise APIError(404, "Fine-tuning is off on this server: start it with --data-dir FOLDER",
                           "invalid_request_error", "fine_tuning_disabled")

    @app.post("/v1/files")
    async def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)):
        service_on()
        content = await file.read()
        return await run_in_threadpool(files.upload, org(request), file.filename, content, purpose)

    @app.get("/v1/files")
    async def list_files(request: Request, purpose: str | None = None, after: str | None = None,
                         limit: int | None = None, order: str = "desc"):
        service_on()
        return await run_in_threadpool(files.list, org(request), purpose, after, limit, order)

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str, request: Request):
        service_on()
        return files.retrieve(org(request), file_id)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request):
        service_on()
        return FileResponse(files.content(org(request), file_id), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request):
        service_on()
        return await run_in_threadpool(files.delete, org(request), file_id)

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request, body: dict = Body(...)):
        service_on()
        return await run_in_threadpool(jobs.create, org(request), body)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int | None = None):
        service_on()
        # OpenAI's filter syntax: ?metadata[team]=ops&metadata[run]=7
        metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                    if k.startswith("metadata[") and k.endswith("]")}
        return await run_in_threadpool(jobs.list, org(request), after, limit, metadata)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def retrieve_job(job_id: str, request: Request):
        service_on()
        return await run_in_threadpool(jobs.retrieve, org(request), job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request):
        service_on()
        return await run_in_threadpool(jobs.cancel, org(request), job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause_job(job_id: str, request: Request):
        service_on()
        return await run_in_threadpool(jobs.pause, org(request), job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume_job(job_id: str, request: Request):
        service_on()
        return await run_in_threadpool(jobs.resume, org(request), job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request, after: str | None = None, limit: int | None = None):
        service_on()
        return await run_in_threadpool(jobs.events, org(request), job_id, after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def job_checkpoints(job_id: str, request: Request, after: str | None = None, limit: int | None = None):
        service_on()
        return await run_in_threadpool(jobs.checkpoints, org(request), job_id, after, limit)
