from __future__ import annotations

from pathlib import Path

import pytest

from tests.synth.teacher_server import RunningTeacher, ScriptedTeacher, order

QUICKSTART = Path(__file__).resolve().parents[2] / "src" / "tunesmith" / "assets" / "quickstart"


@pytest.fixture
def teacher():
    """(scripted teacher, its /v1 URL): a fresh server per test, so counts start at zero."""
    scripted = ScriptedTeacher()
    with RunningTeacher(scripted) as url:
        yield scripted, url


@pytest.fixture
def seeds(tmp_path) -> Path:
    """Ten real seed examples of the quickstart task."""
    lines = (QUICKSTART / "train.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def held_out() -> Path:
    return QUICKSTART / "test.jsonl"


def order_rows(ns, answer=order) -> list[dict]:
    rows = []
    for n in ns:
        prompt, response = answer(n)
        rows.append({"id": f"o{n}", "messages": [{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": response}]})
    return rows


