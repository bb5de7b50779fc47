"""Opt-in traffic log: one JSON line per completed chat choice, in the OpenAI `messages` format.

Each line is a complete training record (`tunesmith data validate` reads the file as is): the
request's messages followed by the assistant's answer, plus the model/adapter that answered and
UTC timestamps and the request's `metadata` tags, so answers from a large model can become training
data for a small one (`tunesmith data from-traffic`). A choice
that did not finish (client hang-up, timeout, error) is never written: it would teach cut-off answers.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from tunesmith.errors import UserError


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_log_path(path: str | Path, flag: str = "--traffic-log") -> Path:
    """Refuse (UserError) a log path the server could not append to, before any model is loaded."""
    path = Path(path).expanduser()
    parent = path.parent
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder", hint="name a file, e.g. traffic.jsonl inside it")
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise UserError(f"{flag} {path}: the folder {parent} {what}", hint="create the folder first, or log elsewhere")
    if path.exists():
        if not path.is_file():
            raise UserError(f"{flag} {path}: not a regular file")
        if not os.access(path, os.W_OK):
            raise UserError(f"{flag} {path}: the file is not writable", hint="fix its permissions or log elsewhere")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot create a file in {parent} (permission denied)",
                        hint="log to a folder you can write to")
    return path


class TrafficLog:
    def __init__(self, path: str | Path):
        self.path = check_log_path(path)
        self._lock = threading.Lock()
        # Line-buffered append: a crash loses at most the line being written, never earlier ones.
        try:
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise UserError(f"--traffic-log {self.path}: cannot open for appending ({exc.strerror})") from None

    def write(self, *, messages: list[dict], answer: str, model: str, adapter: str | None, started: str,
              finish_reason: str, usage: dict, request_id: str, metadata: dict[str, str] | None = None) -> None:
        record = {"messages": [*messages, {"role": "assistant", "content": answer}], "model": model,
                  "adapter": adapter, "request_id": request_id, "started_at": started, "finished_at": utc_now(),
                  "finish_reason": finish_reason, "usage": usage, "metadata": metadata or {}}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._fh.write(line)

    def close(self) -> None:
        with self._lock:
            self._fh.close()
