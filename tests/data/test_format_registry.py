"""An input format is one `Format` class registered once: config validation, detection, loading,
error hints and `tunesmith data formats` all read the registry. A toy format registered inside the
test shows a new one needs nothing else."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tunesmith.cli import main
from tunesmith.config import validate
from tunesmith.data.formats import FORMATS, Format, detect_format, register, unregister
from tunesmith.data.load import load_samples, read_samples
from tunesmith.data.schema import Sample
from tunesmith.errors import ConfigError, DataError


class QA(Format):
    """{"question": ..., "answer": ...}: a test-only format."""

    name = "qa"
    keys = ("question", "answer")

    def parse(self, record: dict) -> Sample:
        return Sample(messages=[{"role": "user", "content": record["question"]},
                                {"role": "assistant", "content": record["answer"]}])


@pytest.fixture
def qa_format():
    register(QA)
    try:
        yield FORMATS["qa"]
    finally:
        unregister("qa")
    assert "qa" not in FORMATS


def cli(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_detection_order_is_unchanged():
    order = [f.name for f in sorted(FORMATS.values(), key=lambda f: f.detect_rank)]
    # The preference formats (issue 16) are tried before the formats whose keys they also carry.
    assert order == ["messages", "sharegpt", "preference", "openai_preference", "alpaca", "kto", "prompt_completion",
                     "text"]
    # A preference pair that also carries a completion is read as a pair.
    assert detect_format({"prompt": "p", "completion": "c", "chosen": "a", "rejected": "b"}) == "preference"


def test_data_format_is_validated_against_the_registry():
    assert validate({"data": {"format": "sharegpt"}}).data.format == "sharegpt"
    with pytest.raises(ConfigError) as e:
        validate({"data": {"format": "sharegtp"}}, "x.yaml")
    assert "x.yaml: data.format: unknown data format 'sharegtp' (did you mean 'sharegpt'?)" in e.value.message
    assert "use one of: auto, messages, sharegpt, alpaca, prompt_completion, preference, text" in e.value.message


def test_a_registered_format_is_accepted_detected_loaded_and_listed(qa_format, tmp_path, capsys):
    assert validate({"data": {"format": "qa"}}).data.format == "qa"
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}])
    samples = load_samples(path)
    assert [s.messages[-1]["content"] for s in samples] == ["4", "6"]
    assert read_samples(path).format == "qa" and len(load_samples(path, "qa")) == 2

    odd = write_jsonl(tmp_path / "odd.jsonl", [{"query": "q"}])
    (problem,) = read_samples(odd).errors
    assert "expected one of: messages, conversations, instruction+output, prompt+completion, prompt+chosen+rejected, " \
           "text, input+preferred_output+non_preferred_output, prompt+completion+label, question+answer " \
           "(or pass --format)" in str(problem)
    with pytest.raises(DataError, match="use one of: auto, .*, qa"):
        read_samples(path, "qq")

    code, out, _ = cli(["data", "formats", "--json"], capsys)
    listed = {f["name"]: f for f in json.loads(out)}
    assert code == 0 and listed["qa"]["keys"] == ["question", "answer"]
    assert listed["qa"]["description"].startswith('{"question": ..., "answer": ...}')
    code, out, _ = cli(["data", "validate", str(path)], capsys)
    assert code == 0 and f"{path}: format qa, 2 records, 2 valid" in out


def test_an_unregistered_format_is_refused_again(tmp_path):
    with pytest.raises(ConfigError, match="unknown data format 'qa'"):
        validate({"data": {"format": "qa"}})


def test_register_needs_a_name_and_identifying_keys():
    class Nameless(Format):
        keys = ("x",)

    with pytest.raises(TypeError):
        register(Nameless)
