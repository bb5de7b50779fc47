"""Atomic writes: every output appears complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tunesmith.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries; outputs should get the modes a plain open()/mkdir() gives.
_UMASK = _umask()


# Files that mark a folder as one of our own outputs: an HF model (config.json), a PEFT adapter, a
# bottleneck adapter, a training checkpoint. Replacing a folder deletes it, so only such a folder (or
# an empty one) is ever replaced: `merge -o runs/x` must not wipe the run that holds the adapter.
OUTPUT_MARKERS = ("config.json", "adapter_config.json", "bottleneck_config.json", "trainable.safetensors")


def check_replaceable(final: str | os.PathLike, markers: tuple[str, ...] = OUTPUT_MARKERS) -> None:
    """Raise UserError unless `final` is absent, empty, or a flat folder holding one of `markers`."""
    final = Path(final)
    if not final.exists():
        return
    if not final.is_dir():
        raise UserError(f"{final}: exists and is not a folder", hint="choose another output path, or remove the file")
    entries = sorted(final.iterdir())
    if not entries:
        return
    # Model, adapter and checkpoint folders are flat: a subfolder means something else lives here.
    subdirs = [p.name for p in entries if p.is_dir()]
    if not subdirs and any((final / m).is_file() for m in markers):
        return
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise UserError(f"{final}: refusing to replace this folder: it is not empty and not a previous output of this "
                    f"kind (it holds {shown}; an output folder holds {' or '.join(markers)} and no subfolders)",
                    hint=f"choose a new or empty output folder, or remove {final} yourself if it can go")


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """`path` is `folder` itself or somewhere below it (after resolving links)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_not_inside(out: str | os.PathLike, inputs, option: str = "-o") -> None:
    """Raise UserError when the output folder is, or contains, one of the input folders."""
    for src in inputs:
        if is_within(src, out):
            raise UserError(f"{option} {out}: the output folder contains the input {src}, and writing the output "
                            "would replace it",
                            hint=f"write to a folder of its own, e.g. {Path(src).parent / 'merged'}")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, markers: tuple[str, ...] = OUTPUT_MARKERS) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `final` in one rename.

    An existing `final` is replaced only when `check_replaceable(final, markers)` allows it."""
    final = Path(final)
    check_replaceable(final, markers)   # before the caller does the expensive work
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        check_replaceable(final, markers)   # again: the folder may have changed while we worked
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        # Rename the old folder away first so there is never a moment with neither.
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w") -> Iterator:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def write_jsonl(path: str | os.PathLike, rows) -> None:
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
