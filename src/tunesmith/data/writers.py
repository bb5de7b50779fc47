"""Writers: rows out to .jsonl / .json / .parquet, atomically (a failed run leaves no output file).

`open_writer(path)` picks the writer from the suffix. JSONL and JSON stream row by row; Parquet
buffers (its schema comes from all rows). Every writer writes into a temporary sibling that
replaces `path` only when the `with` block finishes without an exception.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from tunesmith.errors import DataError
from tunesmith.io_utils import atomic_file


def _dumps(row: dict) -> str:
    # default=str: Parquet and datasets records may hold timestamps (serve logs do).
    return json.dumps(row, ensure_ascii=False, default=str)


@contextlib.contextmanager
def _jsonl(path: Path) -> Iterator[Callable[[dict], None]]:
    with atomic_file(path) as fh:
        yield lambda row: fh.write(_dumps(row) + "\n")


@contextlib.contextmanager
def _json(path: Path) -> Iterator[Callable[[dict], None]]:
    with atomic_file(path) as fh:
        first = [True]

        def write(row: dict) -> None:
            fh.write(("[\n" if first[0] else ",\n") + _dumps(row))
            first[0] = False

        yield write
        fh.write("[]\n" if first[0] else "\n]\n")


@contextlib.contextmanager
def _parquet(path: Path) -> Iterator[Callable[[dict], None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict] = []
    yield rows.append
    # Columns from every row's keys (from_pylist would take only the first row's), missing = null.
    keys = list(dict.fromkeys(k for row in rows for k in row))
    try:
        table = pa.table({k: [row.get(k) for row in rows] for k in keys})
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # A column holding strings in some rows and lists in others (a prompt as text or as messages).
        for k in keys:
            kinds = sorted({type(row[k]).__name__ for row in rows if row.get(k) is not None})
            if len(kinds) > 1:
                raise DataError(f"{path}: cannot write Parquet: column '{k}' holds {' and '.join(kinds)} values in "
                                "different rows (Parquet keeps one type per column)",
                                hint="write .jsonl or .json instead") from None
        raise
    with atomic_file(path, "wb") as fh:
        pq.write_table(table, fh)


WRITERS = {".jsonl": _jsonl, ".ndjson": _jsonl, ".json": _json, ".parquet": _parquet}


def check_output(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in WRITERS:
        raise DataError(f"{path}: cannot write '{path.suffix}' files", hint=f"name the output with one of {', '.join(WRITERS)}")
    if path.is_dir():
        raise DataError(f"{path} is a folder", hint="give a file path for the output")
    return path


def open_writer(path: str | Path):
    path = check_output(path)
    return WRITERS[path.suffix.lower()](path)
