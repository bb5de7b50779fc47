"""`data split`: a seeded train/validation split that keeps each record exactly as it was written.

`split_items` is the one split: `data split` calls it on the file's records and a run calls it on
its samples for `data.val_split` (pipeline.split_samples), so `data split --val F --seed S` holds
out exactly the examples a run with `val_split: F` and `train.seed: S` would.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from tunesmith.data.load import Scan, empty_file_problem
from tunesmith.data.writers import check_output, open_writer
from tunesmith.errors import DataError


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices into n items, each sorted; at least one val item when fraction > 0."""
    if fraction <= 0:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(n * fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


T = TypeVar("T")


def split_items(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, val) items, each in the input's order (`split_indices`' draw)."""
    train_idx, val_idx = split_indices(len(items), fraction, seed)
    return [items[i] for i in train_idx], [items[i] for i in val_idx]


def write_together(outputs: list[tuple[Path, list[dict]]]) -> None:
    """Write every (path, rows) into a temporary folder beside the targets, then move them into
    place: a failure while writing any of them leaves none behind (never a train file without
    its val file)."""
    folder = outputs[0][0].parent
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".split.tmp-", dir=folder))
    moved: list[Path] = []
    try:
        for target, rows in outputs:
            with open_writer(staging / target.name) as write:
                for row in rows:
                    write(row)
        for target, _ in outputs:
            os.replace(staging / target.name, target)
            moved.append(target)
    except BaseException:
        # Only a rename can fail after another output is in place; take that one back out.
        for target in moved:
            with contextlib.suppress(OSError):
                target.unlink()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def split_file(path: str | Path, val: float, seed: int, out_dir: str | Path | None = None,
               fmt: str = "auto", max_errors_shown: int = 20) -> dict:
    if not 0 < val < 1:
        raise DataError(f"--val must be between 0 and 1 (exclusive), got {val}")
    path = Path(path)
    out_dir = Path(out_dir) if out_dir is not None else path.parent
    stem = path.name[: -len(path.suffix)] if path.suffix and not path.is_dir() else path.name
    train_out, val_out = out_dir / f"{stem}.train.jsonl", out_dir / f"{stem}.val.jsonl"
    for target in (train_out, val_out):
        check_output(target)  # before reading: a target that cannot be written fails fast
    scan = Scan(path, fmt)
    # The records are held in memory: a seeded shuffle needs the count before the first write.
    records, errors, n_errors = [], [], 0
    for item in scan:
        if item.problem is not None:
            n_errors += 1
            if len(errors) < max_errors_shown:
                errors.append(str(item.problem))
        elif not n_errors:
            records.append(item.record)
    if scan.records == 0:
        n_errors += 1
        errors.append(str(empty_file_problem(scan)))
    if n_errors:
        more = f"\n  ... and {n_errors - len(errors)} more" if n_errors > len(errors) else ""
        raise DataError(f"{n_errors} problem(s) in {path}; nothing written:\n" + "\n".join(f"  {e}" for e in errors) + more,
                        hint=f"`tunesmith data validate {path}` lists them all", exit_code=1)
    if len(records) < 2:
        raise DataError(f"{path} holds {len(records)} record(s); a split needs at least 2")
    train_rows, val_rows = split_items(records, val, seed)
    if not train_rows:
        raise DataError(f"--val {val} leaves no training records out of {len(records)}")
    write_together([(train_out, train_rows), (val_out, val_rows)])
    return {"input": str(path), "format": scan.format, "train": str(train_out), "val": str(val_out),
            "n_train": len(train_rows), "n_val": len(val_rows), "seed": seed}
