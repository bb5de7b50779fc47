"""Every verb module listed in `tunesmith.cli.COMMAND_MODULES` must import: a missing or broken one is
a bug to see at once, not a verb that silently disappears from `tunesmith --help`."""

from __future__ import annotations

import sys

import pytest

import tunesmith.cli as cli


def test_a_missing_command_module_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "no_such_verb"])
    with pytest.raises(ModuleNotFoundError, match="tunesmith.cli.no_such_verb"):
        cli._load_commands()


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch, tmp_path):
    (tmp_path / "broken_verb.py").write_text("import tunesmith_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "__path__", [*cli.__path__, str(tmp_path)])
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["broken_verb"])
    monkeypatch.delitem(sys.modules, "tunesmith.cli.broken_verb", raising=False)
    with pytest.raises(ModuleNotFoundError, match="tunesmith_no_such_dependency"):
        cli._load_commands()


def test_every_listed_command_module_loads():
    cli._load_commands()
    for name in cli.COMMAND_MODULES:
        assert f"tunesmith.cli.{name}" in sys.modules
