"""`tunesmith jobs list | show | cancel | logs`: the fine-tuning jobs of a running `tunesmith serve --data-dir`,
through the same OpenAI HTTP API any client uses (the `openai` package)."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone

import typer

from tunesmith.cli.common import app, out, print_table
from tunesmith.errors import UserError

jobs_app = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs of a running `tunesmith serve --data-dir`.")
app.add_typer(jobs_app, name="jobs")

FINAL = ("succeeded", "failed", "cancelled")
UrlOpt = typer.Option("http://127.0.0.1:8000/v1", "--base-url", envvar="TUNESMITH_BASE_URL",
                      help="the server's OpenAI base URL")
KeyOpt = typer.Option(None, "--api-key", envvar="TUNESMITH_API_KEY", help="your API key (it decides which jobs you see)")
JobArg = typer.Argument(..., help="job id (ftjob-...)")


@contextlib.contextmanager
def _client(base_url: str, api_key: str | None):
    """An openai client; its errors as one UserError line naming the server or the job."""
    try:
        import openai
    except ImportError:
        raise UserError("`tunesmith jobs` needs the openai package", hint="pip install 'tunesmith[serve]'") from None
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=1, timeout=30)
    try:
        yield client
    except openai.APIConnectionError:
        raise UserError(f"cannot reach {base_url}", hint="start `tunesmith serve --data-dir FOLDER`, or pass --base-url") from None
    except openai.APIStatusError as exc:
        raise UserError(f"{base_url}: {exc.status_code}: {exc.message}",
                        hint="check --api-key: each key sees only its own jobs" if exc.status_code in (401, 404) else None) from None


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@jobs_app.command("list")
def list_jobs(limit: int = typer.Option(20, help="jobs to show, newest first"), base_url: str = UrlOpt,
              api_key: str | None = KeyOpt):
    """Your jobs, newest first."""
    with _client(base_url, api_key) as client:
        jobs = []
        for job in client.fine_tuning.jobs.list(limit=min(limit, 100)):
            jobs.append(job)
            if len(jobs) >= limit:
                break
    print_table("fine-tuning jobs", ["id", "status", "created (UTC)", "fine-tuned model"],
                [(j.id, j.status, _when(j.created_at), j.fine_tuned_model or "-") for j in jobs])


@jobs_app.command("show")
def show(job_id: str = JobArg, base_url: str = UrlOpt, api_key: str | None = KeyOpt):
    """One job: status, files, hyperparameters, result files and checkpoints."""
    with _client(base_url, api_key) as client:
        job = client.fine_tuning.jobs.retrieve(job_id)
        checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job_id)) if job.status == "succeeded" else []
    hp = job.hyperparameters
    rows = [("status", job.status), ("model", job.model), ("fine-tuned model", job.fine_tuned_model or "-"),
            ("method", f"{job.method.type} ({getattr(job.method, 'name', None) or 'lora'})" if job.method else "-"),
            ("training file", job.training_file), ("validation file", job.validation_file or "-"),
            ("hyperparameters", f"n_epochs={hp.n_epochs} batch_size={hp.batch_size} "
                                f"learning_rate_multiplier={hp.learning_rate_multiplier}"),
            ("seed", job.seed), ("created", _when(job.created_at)), ("finished", _when(job.finished_at)),
            ("estimated finish", _when(job.estimated_finish)), ("trained tokens", job.trained_tokens or "-"),
            ("result files", ", ".join(job.result_files) or "-")]
    if job.error:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    for ckpt in checkpoints:
        rows.append((f"checkpoint step {ckpt.step_number}", ckpt.fine_tuned_model_checkpoint))
    print_table(job.id, ["field", "value"], rows)


@jobs_app.command("cancel")
def cancel(job_id: str = JobArg, base_url: str = UrlOpt, api_key: str | None = KeyOpt):
    """Cancel a queued or running job (a running one stops at the end of its current step)."""
    with _client(base_url, api_key) as client:
        job = client.fine_tuning.jobs.cancel(job_id)
    out.print(f"{job.id}: {job.status}", markup=False, highlight=False)


@jobs_app.command("logs")
def logs(job_id: str = JobArg, follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends"),
         base_url: str = UrlOpt, api_key: str | None = KeyOpt):
    """The job's events, oldest first: messages and per-step metrics."""
    seen: set[str] = set()
    with _client(base_url, api_key) as client:
        while True:
            fresh = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.id not in seen]
            for event in reversed(fresh):       # the API pages newest first
                seen.add(event.id)
                level = "" if event.level == "info" else f"{event.level}: "
                out.print(f"{_when(event.created_at)}  {level}{event.message}", markup=False, highlight=False)
            if not follow or client.fine_tuning.jobs.retrieve(job_id).status in FINAL:
                return
            time.sleep(1.0)
