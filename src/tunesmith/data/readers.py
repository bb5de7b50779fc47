"""Readers: a file or folder in, `(where, record)` pairs out, streaming where the format allows.

`where` is the 1-based line a record starts on in the file being read (JSONL, a JSON array, CSV
counting the header as line 1), the row number for Parquet and datasets folders, or a `Loc` when
the record comes from another file (one .txt/.md of a folder). A record that cannot be read comes
out as a `ReadProblem` so validation can report it and go on; damage that makes the rest of a
file unreadable (a broken JSON array, a CSV row the parser rejects, a damaged Parquet page) comes
out as one last `ReadProblem` and stops that reader, and a folder `datasets` cannot open is a
`DataError`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import DataError


@dataclass
class ReadProblem:
    field: str
    message: str


@dataclass(frozen=True)
class Loc:
    file: str
    line: int


Record = dict | ReadProblem
Where = int | Loc
READERS: dict[str, Callable[[Path], Iterator[tuple[Where, Record]]]] = {}

# Text decoded with errors="surrogateescape" keeps each undecodable byte as one lone surrogate.
_BAD_BYTE = re.compile("[\udc80-\udcff]")
TEXT_SUFFIXES = (".txt", ".md")


def reader(*suffixes: str):
    def wrap(fn):
        for s in suffixes:
            READERS[s] = fn
        return fn
    return wrap


def _utf8_problem(exc: UnicodeDecodeError) -> ReadProblem:
    return ReadProblem("(line)", f"invalid UTF-8: byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1}; "
                                 "re-save the file as UTF-8")


@reader(".jsonl", ".ndjson")
def read_jsonl(path: Path) -> Iterator[tuple[Where, Record]]:
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                yield line_no, _utf8_problem(exc)
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


def _line_of(data: bytes | str, offset: int) -> int:
    return data.count(b"\n" if isinstance(data, bytes) else "\n", 0, offset) + 1


@reader(".json")
def read_json(path: Path) -> Iterator[tuple[Where, Record]]:
    """A JSON array of records (or one object). Elements are decoded one at a time so every record
    gets the line it starts on, and the records before a syntax error still come out."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield _line_of(raw, exc.start), ReadProblem("(file)", f"invalid UTF-8: byte 0x{raw[exc.start]:02x}; "
                                                              "re-save the file as UTF-8")
        return
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text).end()
    if pos == len(text):
        return
    if text[pos] == "{":
        try:
            obj, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield exc.lineno, ReadProblem("(file)", f"invalid JSON: {exc.msg} at column {exc.colno}")
            return
        yield _line_of(text, pos), obj
        return
    if text[pos] != "[":
        yield _line_of(text, pos), ReadProblem("(file)", "expected a JSON array of records (or use .jsonl, one object per line)")
        return
    pos = ws.match(text, pos + 1).end()
    line, counted_to = 1, 0
    while pos < len(text) and text[pos] != "]":
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield exc.lineno, ReadProblem("(line)", f"invalid JSON: {exc.msg} at column {exc.colno}")
            return
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        yield line, obj if isinstance(obj, dict) else ReadProblem("(record)", f"expected an object, got {type(obj).__name__}")
        pos = ws.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = ws.match(text, pos + 1).end()
        elif pos >= len(text) or text[pos] != "]":
            yield _line_of(text, pos), ReadProblem("(line)", "invalid JSON: expected ',' or ']' after a record")
            return


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
def read_csv(path: Path) -> Iterator[tuple[Where, Record]]:
    # surrogateescape: a bad byte becomes a marker in its row instead of killing the whole read.
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        rows = csv.DictReader(fh)
        try:
            header = rows.fieldnames
        except csv.Error as exc:
            yield 1, ReadProblem("(header)", f"unreadable CSV: {exc}")
            return
        if header is None:
            return
        if any(_BAD_BYTE.search(k) for k in header):
            yield 1, ReadProblem("(header)", "invalid UTF-8 in the header; re-save the file as UTF-8")
            return
        start = 2
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                # The parser's position after an error is undefined, so the rest of the file is not trusted.
                yield start, ReadProblem("(line)", f"unreadable CSV: {exc}; the rows after it were not read")
                return
            bad = [k for k, v in row.items() if isinstance(v, str) and _BAD_BYTE.search(v)]
            if bad:
                yield start, ReadProblem(bad[0], "invalid UTF-8 byte; re-save the file as UTF-8")
            else:
                # A blank cell is a blank value ("completion: empty", which `clean` removes), not a missing
                # column; cells past a short row's end (None) are missing.
                yield start, {k: _cell(v) for k, v in row.items() if k is not None and v is not None}
            start = rows.line_num + 1  # a quoted cell may span several lines


@reader(".parquet")
def read_parquet(path: Path) -> Iterator[tuple[Where, Record]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    row = 0
    batches = file.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
            records = [] if batch is None else batch.to_pylist()
        except Exception as exc:  # a damaged page: pyarrow raises OSError, ArrowInvalid, ...
            yield row + 1, ReadProblem("(file)", f"damaged Parquet data from row {row + 1} on ({exc}); "
                                                 "the rows after it were not read")
            return
        if batch is None:
            return
        for record in records:
            row += 1
            yield row, record


def read_datasets_folder(path: Path) -> Iterator[tuple[Where, Record]]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict: take its train split, or its only one
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
    except Exception as exc:  # missing or damaged arrow/state files raise many types
        raise DataError(f"{path}: not a readable datasets folder ({type(exc).__name__}: {exc})",
                        hint="re-save it with datasets' save_to_disk, or export it to .jsonl / .parquet") from None
    rows = iter(ds)
    i = 0
    while True:
        try:
            record = next(rows, None)
        except Exception as exc:
            raise DataError(f"{path}: damaged datasets folder at row {i + 1} ({type(exc).__name__}: {exc})",
                            hint="re-save it with datasets' save_to_disk, or export it to .jsonl / .parquet") from None
        if record is None:
            return
        i += 1
        yield i, dict(record)


def read_text_folder(path: Path) -> Iterator[tuple[Where, Record]]:
    """Each .txt/.md file below `path` is one raw-text record, in sorted path order."""
    for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()):
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            yield Loc(str(file), _line_of(raw, exc.start)), ReadProblem("(file)", f"invalid UTF-8: byte 0x{raw[exc.start]:02x}; "
                                                                                  "re-save the file as UTF-8")
            continue
        yield Loc(str(file), 1), {"text": text, "id": str(file.relative_to(path))}


def is_datasets_folder(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def iter_records(path: str | Path) -> Iterator[tuple[Where, Record]]:
    path = Path(path)
    if path.is_dir():
        return read_datasets_folder(path) if is_datasets_folder(path) else read_text_folder(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    fn = READERS.get(path.suffix.lower())
    if fn is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'",
                        hint=f"use one of {', '.join(sorted(READERS))}, a datasets folder or a folder of .txt/.md")
    return fn(path)
