"""The sandbox's guard is a real module (eval/sandbox_child.py): importing it changes nothing in the
importing process, and it is what the sandbox runs (its behaviour is pinned in tests/eval/test_passk.py)."""

from __future__ import annotations

import importlib
import sqlite3
import sys
from pathlib import Path


def test_importing_the_guard_installs_nothing():
    connect, hooks_before = sqlite3.connect, sys.dont_write_bytecode
    child = importlib.import_module("tunesmith.eval.sandbox_child")
    assert sqlite3.connect is connect and sqlite3.Connection.__name__ == "Connection"
    assert sys.dont_write_bytecode == hooks_before
    assert child._GUARDED_SQLITE == ()
    # Its helpers are plain functions a test can call.
    assert child._sqlite_path(":memory:") is None and child._sqlite_path("file:x.db?mode=ro") == "x.db"


def test_the_sandbox_runs_the_shipped_module():
    from tunesmith.eval import sandbox, sandbox_child

    assert sandbox._child_source() == Path(sandbox_child.__file__).read_text(encoding="utf-8")
    compile(sandbox._child_source(), "-c", "exec")
