"""Opt-in traffic log: one JSON line per answered chat choice, in the OpenAI `messages` format.

Each line is a complete training record (`tunesmith data validate` reads the file as is): the
request's messages followed by the assistant's answer, plus the model/adapter that answered and
UTC timestamps, so answers from a large model can become training data for a small one.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class TrafficLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Line-buffered append: a crash loses at most the line being written, never earlier ones.
        self._fh = open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, *, messages: list[dict], answer: str, model: str, adapter: str | None, started: str,
              finish_reason: str, usage: dict, request_id: str) -> None:
        record = {"messages": [*messages, {"role": "assistant", "content": answer}], "model": model,
                  "adapter": adapter, "request_id": request_id, "started_at": started, "finished_at": utc_now(),
                  "finish_reason": finish_reason, "usage": usage}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._fh.write(line)

    def close(self) -> None:
        with self._lock:
            self._fh.close()
