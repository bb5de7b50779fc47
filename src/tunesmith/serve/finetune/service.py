"""The fine-tuning service of one server: its store, its job supervisor, and the OpenAI objects they show.

`build_state` creates one when `ServeOptions.data_dir` is set; the routes of /v1/files and
/v1/fine_tuning (serving_files.py, serving_jobs.py) reach it as `state.finetune`.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.serve.finetune.store import Store
from tunesmith.serve.finetune.supervisor import Supervisor

# The organization of requests made with --api-key (or with no key at all).
LOCAL_ORG = "local"


class FineTuneService:
    def __init__(self, state, options):
        self.options = options
        self._lock = lock_data_dir(Path(options.data_dir))
        self.store = Store(options.data_dir)
        keys = dict(options.tenants)
        if options.api_key:
            keys.setdefault(LOCAL_ORG, options.api_key)
        self.store.register_orgs(keys)
        self.supervisor = Supervisor(state, self.store)

    def start(self) -> None:
        self.supervisor.start()

    def close(self) -> None:
        self.supervisor.close()
        self.store.close()
        self._lock.close()


def lock_data_dir(folder: Path):
    """Hold DATA_DIR/server.lock for this server's life: two servers on one folder would both resume
    the same interrupted job. The kernel drops the lock when the process dies, however it dies."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / "server.lock", "a+")   # noqa: SIM115  (held open until close())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"--data-dir {folder}: another tunesmith server is using this folder",
                        hint="stop it first, or give this server a --data-dir of its own") from None
    return handle


def org_keys(options) -> dict[str, str]:
    """API key -> organization, for the Guard: each tenant's key, and --api-key as 'local'."""
    keys = {key: org for org, key in options.tenants.items()}
    if options.api_key:
        keys.setdefault(options.api_key, LOCAL_ORG)
    return keys


# -- OpenAI objects --------------------------------------------------------------------------------

def file_object(row: dict) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "status_details": None,
            "expires_at": None}


def job_object(row: dict) -> dict:
    from tunesmith.serve.finetune.job_spec import reported_hyperparameters

    request = row["request"]
    hp = reported_hyperparameters(row["overrides"])
    method_type = (request.get("method") or {}).get("type", "supervised")
    method = {"type": method_type, method_type: {"hyperparameters": hp},
              "name": (request.get("method") or {}).get("name") or row["overrides"].get("method", {}).get("name", "lora")}
    return {
        "object": "fine_tuning.job", "id": row["id"], "created_at": row["created_at"], "error": row["error"],
        "fine_tuned_model": row["fine_tuned_model"], "finished_at": row["finished_at"],
        "hyperparameters": {k: hp[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
        "model": request["model"], "organization_id": row["org"], "result_files": row["result_files"],
        "seed": row["overrides"]["train"]["seed"], "status": row["status"], "trained_tokens": row["trained_tokens"],
        "training_file": request["training_file"], "validation_file": request.get("validation_file"),
        "estimated_finish": row["estimated_finish"] if row["status"] == "running" else None,
        "integrations": [], "metadata": request.get("metadata"), "method": method,
        "user_provided_suffix": request.get("suffix"),
    }


def event_object(row: dict) -> dict:
    return {"object": "fine_tuning.job.event", "id": row["id"], "created_at": row["created_at"], "level": row["level"],
            "message": row["message"], "data": row["data"], "type": row["type"]}


def checkpoint_object(row: dict, fine_tuned_model: str) -> dict:
    from tunesmith.serve.finetune.supervisor import checkpoint_model

    return {"object": "fine_tuning.job.checkpoint", "id": row["id"], "created_at": row["created_at"],
            "fine_tuned_model_checkpoint": checkpoint_model(fine_tuned_model, row["step"]),
            "fine_tuning_job_id": row["job_id"], "metrics": row["metrics"], "step_number": row["step"]}


def page(objects: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": objects, "has_more": has_more,
            "first_id": objects[0]["id"] if objects else None, "last_id": objects[-1]["id"] if objects else None}
