"""An adapter folder's tunesmith.json: what `tunesmith train` (or `combine`) recorded about it (its base,
method, loop limit ...). One reader, so every command treats a missing or a broken record alike: missing
is None (a folder plain peft saved has none), broken is a one-line error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import UserError

RECORD = "tunesmith.json"


def read_record(folder: str | Path) -> dict | None:
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    hint = "restore it from the run, or delete it (the folder then loads as a plain PEFT adapter)"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})", hint=hint) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: not a JSON object (got {type(meta).__name__})", hint=hint)
    return meta
