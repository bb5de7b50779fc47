"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints; one
organization's jobs only.

Creating a job checks everything a run would trip over later (the files are this organization's
and fit the method, the base is this server's, every metadata run-config key is valid) and queues
it; the supervisor (finetune/supervisor.py) trains it in a process of its own.
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from tunesmith.errors import ConfigError
from tunesmith.serve.errors import APIError, bad_request
from tunesmith.serve.finetune.job_spec import PREFERENCE_FORMATS, JobCreate, build_config, fine_tuned_name, method_type
from tunesmith.serve.finetune.service import checkpoint_object, event_object, job_object, page
from tunesmith.serve.finetune.store import ACTIVE, FINAL, new_id
from tunesmith.serve.serving_files import limit_param


def job_not_found(job_id: str) -> APIError:
    return APIError(404, f"Fine-tuning job {job_id} not found", "invalid_request_error", "fine_tuning_job_not_found",
                    "fine_tuning_job_id")


class ServingJobs:
    def __init__(self, state):
        self.state = state

    @property
    def store(self):
        return self.state.finetune.store

    def _row(self, org: str, job_id: str) -> dict:
        row = self.store.job(job_id, org)
        if row is None:
            raise job_not_found(job_id)
        return row

    def _file(self, org: str, file_id: str | None, param: str) -> dict:
        row = self.store.file(file_id, org) if file_id else None
        if row is None or row["purpose"] != "fine-tune":
            raise APIError(400, f"invalid {param}: {file_id} (no fine-tune file with this id for this API key)",
                           "invalid_request_error", "invalid_file", param)
        return row

    def create(self, org: str, raw: dict) -> dict:
        options, state = self.state.options, self.state
        try:
            body = JobCreate.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise bad_request(f"{field}: {first['msg']}", field) from None
        if body.model not in (state.base_name, options.model):
            raise APIError(400, f"Model {body.model} is not available for fine-tuning on this server; use "
                                f"'{state.base_name}'", "invalid_request_error", "model_not_available", "model")
        if body.integrations:
            raise bad_request("integrations are not supported by this server", "integrations")
        train = self._file(org, body.training_file, "training_file")
        val = self._file(org, body.validation_file, "validation_file") if body.validation_file else None
        kind = method_type(body)
        for row, param in ((train, "training_file"), (val, "validation_file")):
            if row is not None and (row["format"] in PREFERENCE_FORMATS) != (kind == "dpo"):
                want = ("preference pairs" if kind == "dpo"
                        else "chats or other supervised examples (preference pairs need method type 'dpo')")
                raise bad_request(f"{param} {row['id']} holds {row['format']} records; a {kind} job needs {want}", param)
        if self.store.active_jobs(org) >= options.max_queued_jobs:
            raise APIError(429, f"Organization '{org}' already has {options.max_queued_jobs} unfinished jobs "
                                "(--max-queued-jobs); wait for one to finish or cancel one",
                           "rate_limit_exceeded", "too_many_jobs", None)
        if self.store.disk_bytes() >= options.max_data_bytes:
            raise APIError(429, f"The fine-tuning service's storage is full (--max-data-bytes {options.max_data_bytes}); "
                                "delete files you no longer need", "insufficient_quota", "storage_quota_exceeded", None)
        job_id = new_id("ftjob-")
        try:
            config, _ = build_config(body, base_path=str(state.base_path), train_path=train["path"],
                                     train_records=train["records"], val_path=val["path"] if val else None,
                                     out_dir=str(self.store.job_dir(job_id) / "run"))
        except ConfigError as exc:
            raise bad_request(exc.message, "metadata") from None
        request = body.model_dump(exclude_none=True, mode="json")
        name = fine_tuned_name(state.base_name, {"org": org, "id": job_id, "request": request})
        if len(name) > 128:
            raise bad_request(f"the fine-tuned model's name would be {len(name)} characters, over 128: shorten the "
                              "suffix, or start the server with a shorter --served-model-name", "suffix")
        self.store.add_job(id=job_id, org=org, status="validating_files", request=request, overrides=config)
        self.store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        self.store.add_event(job_id, "Validating training file: " + train["id"] + (f" and validation file: {val['id']}" if val else ""))
        self.store.add_event(job_id, "Files validated; the job is queued")
        # The answer is the job as it was queued, not whatever the supervisor has made of it a moment later:
        # its own poll may start the job between the update and any read after it, so read first.
        created = job_object({**self.store.job(job_id), "status": "queued"})
        self.store.update_job(job_id, status="queued")
        self.state.finetune.supervisor.wake()
        return created

    def retrieve(self, org: str, job_id: str) -> dict:
        return job_object(self._row(org, job_id))

    def list(self, org: str, after: str | None, limit: int | None, metadata: dict[str, str] | None = None) -> dict:
        if any('"' in key for key in metadata or {}):
            raise bad_request('metadata keys may not contain \'"\'', "metadata")
        rows, more = self.store.list_jobs(org, after, limit_param(limit, most=100), metadata)
        return page([job_object(r) for r in rows], more)

    def cancel(self, org: str, job_id: str) -> dict:
        row = self._row(org, job_id)
        if row["status"] in FINAL:
            raise APIError(400, f"Job {job_id} has already {row['status']}", "invalid_request_error",
                           "job_not_cancellable", "fine_tuning_job_id")
        # The worker stops at the end of its step in progress; the supervisor reaps it.
        if self.store.update_job(job_id, only_if=ACTIVE, status="cancelled", finished_at=int(time.time()),
                                 estimated_finish=None):
            self.store.add_event(job_id, "The job was cancelled")
        self.state.finetune.supervisor.wake()
        return job_object(self.store.job(job_id))

    def pause(self, org: str, job_id: str) -> dict:
        """A running (or queued) job stops at the end of its step in progress and waits for `resume`,
        which continues from its last checkpoint: steps after that checkpoint are trained again, to
        the same weights, since resuming is exact."""
        row = self._row(org, job_id)
        if not self.store.update_job(job_id, only_if=("queued", "running"), status="paused", estimated_finish=None):
            raise APIError(400, f"Job {job_id} is {row['status']}; only a queued or running job can be paused",
                           "invalid_request_error", "job_not_pausable", "fine_tuning_job_id")
        self.store.add_event(job_id, "The job was paused")
        self.state.finetune.supervisor.wake()
        return job_object(self.store.job(job_id))

    def resume(self, org: str, job_id: str) -> dict:
        row = self._row(org, job_id)
        if not self.store.update_job(job_id, only_if=("paused",), status="queued"):
            raise APIError(400, f"Job {job_id} is {row['status']}; only a paused job can be resumed",
                           "invalid_request_error", "job_not_paused", "fine_tuning_job_id")
        self.store.add_event(job_id, "The job was resumed; it is queued")
        self.state.finetune.supervisor.wake()
        return job_object(self.store.job(job_id))

    def events(self, org: str, job_id: str, after: str | None, limit: int | None) -> dict:
        self._row(org, job_id)
        rows, more = self.store.list_events(job_id, after, limit_param(limit, most=1000))
        return page([event_object(r) for r in rows], more)

    def checkpoints(self, org: str, job_id: str, after: str | None, limit: int | None) -> dict:
        row = self._row(org, job_id)
        rows, more = self.store.list_checkpoints(job_id, after, limit_param(limit, default=10, most=100))
        model = row["fine_tuned_model"] or fine_tuned_name(self.state.base_name, row)
        return page([checkpoint_object(r, model) for r in rows], more)
