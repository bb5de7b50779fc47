"""Docs that are generated from code stay equal to what the code generates today."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import starter_yaml
from tunesmith.methods.docs import OPTIONS_END, OPTIONS_START, options_section, with_tables

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_methods_md_options_tables_equal_the_models():
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    assert text.count(OPTIONS_START) == 1 and text.count(OPTIONS_END) == 1
    assert options_section() in text, "run `python -m tunesmith.methods.docs` to regenerate docs/methods.md's tables"
    assert with_tables(text) == text


def test_config_md_holds_the_starter_file():
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block == starter_yaml(), "regenerate docs/config.md's yaml block with `tunesmith config init`"
