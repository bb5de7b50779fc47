"""/v1/files: upload (validated training data), list, retrieve, content, delete; one organization's files only.

An upload is written under the data folder, read with the same loader training uses (every format
of tunesmith.data.formats, OpenAI's chat and preference JSONL among them) and refused, naming the
first bad line, unless every record is valid. Another organization's file is a 404, as a missing one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tunesmith.serve.errors import APIError, bad_request
from tunesmith.serve.finetune.service import file_object, page
from tunesmith.serve.finetune.store import ACTIVE, new_id

PURPOSES = ("fine-tune",)
MAX_PROBLEMS_SHOWN = 3


def file_not_found(file_id: str, param: str = "file_id") -> APIError:
    return APIError(404, f"No such File object: {file_id}", "invalid_request_error", "file_not_found", param)


def limit_param(limit: int | None, default: int = 20, most: int = 10_000) -> int:
    limit = default if limit is None else limit
    if not 1 <= limit <= most:
        raise bad_request(f"limit must be between 1 and {most} (got {limit})", "limit")
    return limit


class ServingFiles:
    def __init__(self, state):
        self.state = state

    @property
    def store(self):
        return self.state.finetune.store

    def upload(self, org: str, filename: str, content: bytes, purpose: str) -> dict:
        """Blocking (writes and validates the file): call from a worker thread."""
        from tunesmith.data.readers import READERS

        options = self.state.options
        if purpose not in PURPOSES:
            raise bad_request(f"purpose '{purpose}' is not supported here; use one of: {', '.join(PURPOSES)}", "purpose")
        if len(content) > options.max_upload_bytes:
            raise APIError(413, f"File is {len(content)} bytes, over this server's limit of {options.max_upload_bytes} "
                                "(--max-upload-bytes)", "invalid_request_error", "file_too_large", "file")
        if self.store.disk_bytes() + len(content) > options.max_data_bytes:
            raise APIError(429, f"The fine-tuning service's storage is full (--max-data-bytes {options.max_data_bytes}); "
                                "delete files you no longer need", "insufficient_quota", "storage_quota_exceeded", "file")
        name = Path(filename or "upload.jsonl").name
        suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in READERS else ".jsonl"
        file_id = new_id("file-")
        final = self.store.files_dir / f"{file_id}{suffix}"
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{final.name}")   # the suffix picks the reader
        tmp.write_bytes(content)
        try:
            fmt, records = self._validate(tmp, name)
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        row = self.store.add_file(id=file_id, org=org, filename=name, purpose=purpose, bytes=len(content),
                                  path=str(final), format=fmt, records=records)
        return file_object(row)

    @staticmethod
    def _validate(path: Path, name: str) -> tuple[str, int]:
        from tunesmith.data.load import read_samples
        from tunesmith.errors import UserError

        try:
            result = read_samples(path, keep=False)
        except UserError as exc:
            raise bad_request(f"{name}: {exc.message.replace(str(path), name)}", "file") from None
        errors = result.errors
        if errors:
            shown = "; ".join(f"line {e.line}: {e.field}: {e.message}" for e in errors[:MAX_PROBLEMS_SHOWN])
            more = f" (and {len(errors) - MAX_PROBLEMS_SHOWN} more)" if len(errors) > MAX_PROBLEMS_SHOWN else ""
            raise APIError(400, f"Invalid file {name}: {shown}{more}. Fix the line and upload again "
                                "(`tunesmith data validate` lists every problem).",
                           "invalid_request_error", "invalid_file_format", "file")
        return result.format, result.valid

    def _row(self, org: str, file_id: str) -> dict:
        row = self.store.file(file_id, org)
        if row is None:
            raise file_not_found(file_id)
        return row

    def retrieve(self, org: str, file_id: str) -> dict:
        return file_object(self._row(org, file_id))

    def content(self, org: str, file_id: str) -> Path:
        return Path(self._row(org, file_id)["path"])

    def list(self, org: str, purpose: str | None, after: str | None, limit: int | None, order: str = "desc") -> dict:
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'", "order")
        rows, more = self.store.list_files(org, purpose, after, limit_param(limit, 10_000), order)
        return page([file_object(r) for r in rows], more)

    def delete(self, org: str, file_id: str) -> dict:
        row = self._row(org, file_id)
        in_use = [j["id"] for j in self.store.jobs_with_status(*ACTIVE)
                  if file_id in (j["request"]["training_file"], j["request"].get("validation_file"))]
        if in_use:
            raise APIError(409, f"File {file_id} is used by the unfinished job {in_use[0]}; cancel it first",
                           "invalid_request_error", "file_in_use", "file_id")
        self.store.delete_file(file_id, org)
        with contextlib.suppress(FileNotFoundError):
            Path(row["path"]).unlink()
        return {"id": file_id, "object": "file", "deleted": True}
