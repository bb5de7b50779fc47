"""Atomic writes: complete or absent, and with the modes a plain open()/mkdir() would give."""

from __future__ import annotations

import os
import stat

import pytest

from tunesmith.io_utils import atomic_dir, atomic_file, write_json


def test_outputs_get_umask_modes_not_mkstemp_ones(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f.txt").write_text("hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755


def test_failed_writes_leave_nothing_and_keep_the_old_version(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def make_run_folder(root):
    """A run folder as `tunesmith train` leaves it: files next to an adapter/ and checkpoints/."""
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_config.json").write_text("{}")
    (root / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (root / "checkpoints" / "step-000010").mkdir(parents=True)
    (root / "checkpoints" / "step-000010" / "trainable.safetensors").write_bytes(b"ckpt")
    (root / "config.yaml").write_text("method: lora\n")
    (root / "metrics.jsonl").write_text('{"step": 1}\n')
    return root


def test_atomic_dir_refuses_to_replace_a_folder_that_is_not_an_output(tmp_path):
    from tunesmith.errors import UserError

    run = make_run_folder(tmp_path / "run")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    # A flat folder with config.json but also a subfolder is not a model folder either.
    mixed = tmp_path / "mixed"
    (mixed / "data").mkdir(parents=True)
    (mixed / "config.json").write_text("{}")
    plain_file = tmp_path / "file"
    plain_file.write_text("x")
    before = snapshot(tmp_path)
    for target, expected in [(run, "not empty and not a previous output"), (notes, "it holds todo.txt"),
                             (mixed, "it holds config.json, data/"), (plain_file, "exists and is not a folder")]:
        with pytest.raises(UserError, match=expected) as info:
            with atomic_dir(target) as tmp:
                (tmp / "config.json").write_text("{}")
        assert str(target) in info.value.message and info.value.hint
    assert snapshot(tmp_path) == before          # every file in place, no temporary folder left


def test_atomic_dir_replaces_empty_folders_and_previous_outputs(tmp_path):
    from tunesmith.errors import UserError

    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as tmp:
        (tmp / "config.json").write_text("new")
    assert (empty / "config.json").read_text() == "new"
    for marker in ("config.json", "adapter_config.json", "bottleneck_config.json", "trainable.safetensors"):
        old = tmp_path / marker.split(".")[0]
        old.mkdir()
        (old / marker).write_text("old")
        (old / "stale.bin").write_text("from the previous write")
        with atomic_dir(old) as tmp:
            (tmp / marker).write_text("new")
        assert sorted(p.name for p in old.iterdir()) == [marker] and (old / marker).read_text() == "new"
    # A caller can narrow the kind it replaces: a merged model never replaces an adapter folder.
    with pytest.raises(UserError, match="an output folder holds config.json and no subfolders"):
        with atomic_dir(tmp_path / "adapter_config", markers=("config.json",)):
            pass
    assert (tmp_path / "adapter_config" / "adapter_config.json").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_check_not_inside(tmp_path):
    from tunesmith.errors import UserError
    from tunesmith.io_utils import check_not_inside

    adapter = make_run_folder(tmp_path / "runs" / "x") / "adapter"
    for out in (tmp_path / "runs" / "x", tmp_path / "runs", adapter, tmp_path / "runs" / "x" / "." / "adapter"):
        with pytest.raises(UserError, match="contains the input"):
            check_not_inside(out, [adapter])
    check_not_inside(tmp_path / "runs" / "x" / "merged", [adapter])
    check_not_inside(tmp_path / "runs" / "x2", [adapter])
