"""The teacher's request cache: one JSON file per request, named by the hash of what was asked.

A reply is stored the moment it arrives (temp file + rename, so a killed run never leaves half a
file), and a rerun that asks the same thing reads it back instead of asking again: this is what
makes `tunesmith synth` resumable. The key covers everything that changes the answer (teacher
model, messages, sampling settings, the variant number of a repeated prompt), never the URL or the
API key, so moving the same model to another server keeps the cache valid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunesmith.io_utils import atomic_file


def request_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class RequestCache:
    def __init__(self, folder: str | Path | None):
        # Created by the first reply stored: a run stopped before asking anything leaves nothing behind.
        self.folder = Path(folder) if folder else None

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        if self.folder is None:
            return None
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # damaged by hand: ask again and overwrite it

    def put(self, key: str, value: dict) -> None:
        if self.folder is None:
            return
        with atomic_file(self._path(key)) as fh:
            json.dump(value, fh, ensure_ascii=False)

    def __len__(self) -> int:
        return 0 if self.folder is None or not self.folder.is_dir() else sum(1 for _ in self.folder.glob("*/*.json"))
