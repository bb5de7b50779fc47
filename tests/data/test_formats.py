"""Every input format from every container becomes the same canonical samples."""

from __future__ import annotations

import csv
import json

import pytest

from tunesmith.data.load import load_samples, read_samples
from tunesmith.errors import DataError

CHATS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "times 3?"}, {"role": "assistant", "content": "12"}],
]

# One record set per format and the messages each record must become.
RECORDS = {
    "messages": ([{"messages": c, "id": f"m{i}"} for i, c in enumerate(CHATS)], CHATS),
    "sharegpt": ([{"conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]),
                                      "value": m["content"]} for m in c]} for c in CHATS], CHATS),
    "alpaca": ([{"instruction": "Translate to French", "input": "cat", "output": "chat"},
                {"instruction": "Say hi", "output": "hi", "system": "Be nice."}],
               [[{"role": "user", "content": "Translate to French\n\ncat"}, {"role": "assistant", "content": "chat"}],
                [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Say hi"},
                 {"role": "assistant", "content": "hi"}]]),
    "prompt_completion": ([{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}],
                          [[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
                           [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]]),
}


def _write(path, records):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif suffix == ".csv":
        keys = sorted({k for r in records for k in r})
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            for r in records:
                w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = list(dict.fromkeys(k for r in records for k in r))
        pq.write_table(pa.table({k: [r.get(k) for r in records] for k in keys}), path)
    else:  # a saved datasets folder
        import datasets

        datasets.disable_progress_bars()
        keys = list(dict.fromkeys(k for r in records for k in r))
        datasets.Dataset.from_dict({k: [r.get(k) for r in records] for k in keys}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("container", [".jsonl", ".json", ".csv", ".parquet", "datasets"])
@pytest.mark.parametrize("fmt", list(RECORDS))
def test_every_format_from_every_container(tmp_path, fmt, container):
    records, expected = RECORDS[fmt]
    path = _write(tmp_path / (f"data{container}" if container.startswith(".") else "ds"), records)
    result = read_samples(path)
    assert result.errors == [], [str(e) for e in result.errors]
    assert result.format == fmt
    assert [s.messages for s in result.samples] == expected
    assert all(s.kind == "chat" for s in result.samples)


def test_preference_and_text_formats(tmp_path):
    pref = _write(tmp_path / "p.jsonl", [
        {"prompt": "Best color?", "chosen": "Blue.", "rejected": "No."},
        # TRL's conversational form: prompt and answers as message lists.
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
    ])
    samples = load_samples(pref)
    assert [(s.kind, s.messages, s.chosen, s.rejected) for s in samples] == [
        ("preference", [{"role": "user", "content": "Best color?"}], "Blue.", "No."),
        ("preference", [{"role": "user", "content": "Hi"}], "Hello!", "Go away."),
    ]
    text = _write(tmp_path / "t.jsonl", [{"text": "Raw domain text."}])
    assert [(s.kind, s.text) for s in load_samples(text)] == [("text", "Raw domain text.")]


def test_folder_of_text_files(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.md").write_text("# Title\nBody", encoding="utf-8")
    (tmp_path / "docs" / "sub" / "b.txt").write_text("Second file", encoding="utf-8")
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00\x01")
    samples = load_samples(tmp_path / "docs")
    assert [(s.id, s.text) for s in samples] == [("a.md", "# Title\nBody"), ("sub/b.txt", "Second file")]
    assert samples[1].source == f"{tmp_path / 'docs' / 'sub' / 'b.txt'}:1"
    (tmp_path / "docs" / "bad.txt").write_bytes(b"line one\nline \xff two\n")
    errors = read_samples(tmp_path / "docs").errors
    assert [str(e) for e in errors] == [f"{tmp_path / 'docs' / 'bad.txt'}:2: (file): invalid UTF-8: byte 0xff; re-save the file as UTF-8"]


def test_serve_log_records_with_extra_keys(tmp_path):
    """The server logs OpenAI requests plus its own keys; content may come as text parts."""
    log = _write(tmp_path / "traffic.jsonl", [
        {"adapter": "support-v2", "timestamp": "2026-11-24T10:00:00Z", "latency_ms": 41, "usage": {"total_tokens": 20},
         "messages": [{"role": "developer", "content": "You help."},
                      {"role": "user", "content": [{"type": "text", "text": "Reset "}, {"type": "text", "text": "password?"}],
                       "name": "alice"},
                      {"role": "assistant", "content": "Click 'Forgot password'."}]},
    ])
    (sample,) = load_samples(log)
    assert sample.messages == [{"role": "system", "content": "You help."}, {"role": "user", "content": "Reset password?"},
                               {"role": "assistant", "content": "Click 'Forgot password'."}]


def test_json_array_reports_real_line_numbers(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c",\n   "completion": ""},\n'
                    '  {"prompt": "e", "completion": "f"}\n]\n', encoding="utf-8")
    result = read_samples(path)
    assert [s.source for s in result.samples] == [f"{path}:2", f"{path}:5"]
    assert [str(e) for e in result.errors] == [f"{path}:3: completion: empty"]


def test_csv_multiline_cells_keep_line_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"line1\nline2",x\nq,""\n', encoding="utf-8")
    result = read_samples(path)
    assert result.samples[0].messages[0]["content"] == "line1\nline2"
    assert [str(e) for e in result.errors] == [f"{path}:4: completion: empty"]    # a blank cell is a blank answer


def test_unknown_format_and_forced_format(tmp_path):
    path = _write(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    (err,) = read_samples(path).errors
    assert str(err).startswith(f"{path}:1: (record): cannot tell the format from keys ['answer', 'question']")
    with pytest.raises(DataError, match="unknown data format 'nope'"):
        read_samples(path, "nope")
    forced = _write(tmp_path / "y.jsonl", [{"prompt": "q", "completion": "a", "text": "t"}])
    assert read_samples(forced, "text").samples[0].text == "t"


def test_damaged_containers_point_at_the_line(tmp_path):
    arr = tmp_path / "broken.json"
    arr.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c" "completion": "d"}\n]\n', encoding="utf-8")
    result = read_samples(arr)
    assert len(result.samples) == 1
    assert [str(e) for e in result.errors] == [f"{arr}:3: (line): invalid JSON: Expecting ',' delimiter at column 18"]
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b"prompt,completion\nq1,a1\nq2,caf\xe9\nq3,a3\n")
    result = read_samples(csv_path)
    assert [s.messages[0]["content"] for s in result.samples] == ["q1", "q3"]
    assert [str(e) for e in result.errors] == [f"{csv_path}:3: completion: invalid UTF-8 byte; re-save the file as UTF-8"]
    (tmp_path / "nothing").mkdir()
    assert [str(e) for e in read_samples(tmp_path / "nothing").errors] == [
        f"{tmp_path / 'nothing'}:1: (file): no records: the folder holds no data (.txt/.md files or a saved datasets folder)"]
    empty_array = tmp_path / "e.json"
    empty_array.write_text("[]", encoding="utf-8")
    assert [str(e) for e in read_samples(empty_array).errors] == [f"{empty_array}:1: (file): no records: the file is empty"]


@pytest.mark.parametrize("container", [".jsonl", ".json", ".csv"])
def test_a_leading_byte_order_mark_is_read_past(tmp_path, container):
    """Windows editors (Notepad, Excel's "CSV UTF-8") start files with a UTF-8 BOM; the records and their
    line numbers must be those of the same file without it."""
    records, messages = RECORDS["prompt_completion"]
    plain = _write(tmp_path / f"plain{container}", records + [{"prompt": "Q3", "completion": ""}])
    marked = tmp_path / f"marked{container}"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    want, got = read_samples(plain), read_samples(marked)
    assert [s.messages for s in got.samples] == messages
    assert [s.source.replace("marked", "plain") for s in got.samples] == [s.source for s in want.samples]
    assert [str(e).replace("marked", "plain") for e in got.errors] == [str(e) for e in want.errors]
    assert len(got.errors) == 1


def test_a_byte_order_mark_on_a_text_document(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_bytes(b"\xef\xbb\xbfFirst line")
    assert [s.text for s in load_samples(tmp_path / "docs")] == ["First line"]
