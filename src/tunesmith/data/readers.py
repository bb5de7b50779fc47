"""Readers: a file or folder in, `(line, record)` pairs out, streaming where the format allows.

`line` is the 1-based line for JSONL, the 1-based element index for a JSON array, the CSV row
(counting the header as line 1) and the row number for Parquet and datasets folders. A record that
cannot be read at all comes out as a `ReadProblem` so validation can report it and go on.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tunesmith.errors import DataError


@dataclass
class ReadProblem:
    field: str
    message: str


Record = dict | ReadProblem
READERS: dict[str, Callable[[Path], Iterator[tuple[int, Record]]]] = {}


def reader(*suffixes: str):
    def wrap(fn):
        for s in suffixes:
            READERS[s] = fn
        return fn
    return wrap


@reader(".jsonl", ".ndjson")
def read_jsonl(path: Path) -> Iterator[tuple[int, Record]]:
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, ReadProblem("(line)", f"invalid UTF-8 at byte {exc.start}")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line_no, ReadProblem("(line)", f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(obj, dict):
                yield line_no, ReadProblem("(line)", f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield line_no, obj


@reader(".json")
def read_json(path: Path) -> Iterator[tuple[int, Record]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: invalid UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records")
    for i, obj in enumerate(data, start=1):
        yield i, obj if isinstance(obj, dict) else ReadProblem("(record)", f"expected an object, got {type(obj).__name__}")


def _cell(value: str):
    # CSV cells holding JSON (a messages list) are decoded; plain strings stay strings.
    stripped = value.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return value


@reader(".csv")
def read_csv(path: Path) -> Iterator[tuple[int, Record]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = csv.DictReader(fh)
            for i, row in enumerate(rows, start=2):
                yield i, {k: _cell(v) for k, v in row.items() if k is not None and v not in (None, "")}
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: invalid UTF-8 at byte {exc.start}") from None


@reader(".parquet")
def read_parquet(path: Path) -> Iterator[tuple[int, Record]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def read_datasets_folder(path: Path) -> Iterator[tuple[int, Record]]:
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict: take its train split, or its only one
        ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
    for i, record in enumerate(ds, start=1):
        yield i, dict(record)


def read_text_folder(path: Path) -> Iterator[tuple[int, Record]]:
    for i, file in enumerate(sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md")), start=1):
        try:
            yield i, {"text": file.read_text(encoding="utf-8"), "id": str(file.relative_to(path))}
        except UnicodeDecodeError as exc:
            yield i, ReadProblem(str(file), f"invalid UTF-8 at byte {exc.start}")


def iter_records(path: str | Path) -> Iterator[tuple[int, Record]]:
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return read_datasets_folder(path)
        return read_text_folder(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fn = READERS.get(path.suffix.lower())
    if fn is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'",
                        hint=f"use one of {', '.join(sorted(READERS))}, a datasets folder or a folder of .txt/.md")
    return fn(path)
