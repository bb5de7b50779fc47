"""Malformed files: every problem as FILE:LINE: field: message, exit 1, nothing written, no traceback."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _lines(rows) -> bytes:
    return b"".join((json.dumps(r) if isinstance(r, dict) else r).encode() + b"\n" if isinstance(r, (dict, str)) else r
                    for r in rows)


# (name, file bytes, the exact error line expected after "FILE:")
CASES = [
    ("broken_json", [GOOD, '{"messages": [}'], "2: (line): invalid JSON: Expecting value at column 15"),
    ("missing_field", [GOOD, {"instruction": "x"}], None),  # format is messages: the record has no messages key
    ("wrong_role", [GOOD, {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}],
     "2: messages[0].role: unknown role 'robot' (expected one of system, user, assistant)"),
    ("invalid_utf8", [GOOD, b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'],
     "2: (line): invalid UTF-8: byte 0xe9 at column 47; re-save the file as UTF-8"),
    ("not_ending_with_assistant", [GOOD, {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}],
     "2: messages: conversation does not end with an assistant message"),
    ("duplicate_id", [{**GOOD, "id": 7}, {**GOOD, "id": 7}], None),
    ("wrong_type", [GOOD, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}],
     "2: messages[0].content: expected a string, got int"),
    ("empty_file", [], "1: (file): no records: the file is empty"),
]


def _expected(name, path):
    if name == "missing_field":
        return f"{path}:2: messages: missing"
    if name == "duplicate_id":
        return f"{path}:2: id: duplicate id '7' (first at {path}:1); ids must be unique"
    return None


@pytest.mark.parametrize("name,rows,tail", CASES, ids=[c[0] for c in CASES])
def test_malformed_file(tmp_path, capsys, name, rows, tail):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(_lines(rows))
    expected = f"{path}:{tail}" if tail else _expected(name, path)
    code, out, err = run(["data", "validate", str(path)], capsys)
    assert code == 1
    assert expected in err.splitlines(), err
    assert "Traceback" not in out + err
    # Every command that writes data refuses the file and leaves no output behind.
    for argv in (["data", "clean", str(path), "-o", str(tmp_path / "o.jsonl")],
                 ["data", "convert", str(path), "-o", str(tmp_path / "o.jsonl"), "--to", "chatml"],
                 ["data", "split", str(path), "--val", "0.5", "-o", str(tmp_path / "split")]):
        code, out, err = run(argv, capsys)
        assert code == 1, argv
        assert expected in err, (argv, err)
        assert "Traceback" not in out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_missing_field_in_detected_format(tmp_path, capsys):
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(_lines([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 3},
                             {"instruction": "d", "output": None}]))
    code, _, err = run(["data", "validate", str(path)], capsys)
    assert code == 1
    assert err.splitlines() == [f"{path}:2: output: expected a string, got int", f"{path}:3: output: missing"]


def test_max_errors_and_json_output(tmp_path, capsys):
    path = tmp_path / "many.jsonl"
    path.write_bytes(_lines([GOOD] + ["{bad"] * 5))
    code, _, err = run(["data", "validate", str(path), "--max-errors", "2"], capsys)
    assert code == 1 and len(err.splitlines()) == 2
    code, out, _ = run(["data", "validate", str(path), "--json"], capsys)
    report = json.loads(out)
    assert (code, report["records"], report["valid"], len(report["errors"])) == (1, 6, 1, 5)


def test_warnings_do_not_fail(tmp_path, capsys):
    long = {"messages": [{"role": "user", "content": "x " * 20000}, {"role": "assistant", "content": "ok"}]}
    twice = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}
    path = tmp_path / "warn.jsonl"
    path.write_bytes(_lines([GOOD, long, twice, GOOD]))
    code, out, err = run(["data", "validate", str(path)], capsys)
    assert code == 0 and err == ""
    warnings = [line for line in out.splitlines() if ": warning: " in line]
    assert warnings == [
        f"{path}:2: (record): warning: very long example (40002 characters, roughly 10000 tokens): "
        "it will be dropped or truncated at data.max_len",
        f"{path}:3: messages[1].role: warning: two user messages in a row; many chat templates expect the roles to alternate",
        f"{path}:4: (record): warning: same content as {path}:1 (`tunesmith data clean` removes it)",
    ]


def test_unreadable_inputs_are_user_errors(tmp_path, capsys):
    code, _, err = run(["data", "validate", str(tmp_path / "nope.jsonl")], capsys)
    assert code == 2 and "file not found" in err and "Traceback" not in err
    (tmp_path / "d.xlsx").write_bytes(b"PK")
    code, _, err = run(["data", "validate", str(tmp_path / "d.xlsx")], capsys)
    assert code == 2 and "unsupported file type '.xlsx'" in err
    ok = tmp_path / "ok.jsonl"
    ok.write_bytes(_lines([GOOD]))
    code, _, err = run(["data", "clean", str(ok), "-o", str(tmp_path / "out.txt")], capsys)
    assert code == 2 and "cannot write '.txt' files" in err


def test_empty_response_fails_validate_but_clean_removes_it(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(_lines([GOOD, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}]))
    code, _, err = run(["data", "validate", str(path)], capsys)
    assert code == 1 and err.splitlines() == [f"{path}:2: messages[1].content: empty"]
    code, _, _ = run(["data", "clean", str(path), "-o", str(tmp_path / "o.jsonl")], capsys)
    assert code == 0
    assert [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()] == [GOOD]
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["removed"]["empty_response"] == 1 and report["kept"] == 1
    assert report["examples"]["empty_response"] == [{"source": f"{path}:2", "field": "messages[1].content"}]


def test_blank_csv_cells_are_empty_answers_that_clean_removes(tmp_path, capsys):
    """A spreadsheet's blank answer cell is an empty answer, on the first row too (the header names the format),
    not a missing column; blank ids are no ids."""
    path = tmp_path / "sheet.csv"
    path.write_text("id,prompt,completion\r\n,q1,\r\n,q2,a2\r\n7,q3,a3\r\n,q4,  \r\n", encoding="utf-8")
    code, out, err = run(["data", "validate", str(path)], capsys)
    assert code == 1 and err.splitlines() == [f"{path}:2: completion: empty", f"{path}:5: completion: empty"]
    assert f"{path}: format prompt_completion, 4 records, 2 valid, 2 errors" in out
    code, _, _ = run(["data", "clean", str(path), "-o", str(tmp_path / "o.jsonl")], capsys)
    assert code == 0
    kept = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in kept] == ["q2", "q3"]
    assert [r.get("id") for r in kept] == [None, "7"]
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["removed"]["empty_response"] == 2 and report["kept"] == 2


def test_undetectable_first_record_does_not_hide_the_rest(tmp_path, capsys):
    path = tmp_path / "late.jsonl"
    path.write_bytes(_lines([
        {"question": "q", "answer": "a"},                                                     # 1: no format's keys
        GOOD,                                                                                  # 2: detects messages
        '{"messages": [}',                                                                     # 3
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},  # 4
        {"question": "again"},                                                                 # 5: messages missing
        GOOD,
    ]))
    code, out, err = run(["data", "validate", str(path)], capsys)
    assert code == 1
    assert err.splitlines() == [
        f"{path}:1: (record): cannot tell the format from keys ['answer', 'question']; expected one of: messages, "
        "conversations, instruction+output, prompt+completion, prompt+chosen+rejected, text, "
        "input+preferred_output+non_preferred_output, prompt+completion+label (or pass --format)",
        f"{path}:3: (line): invalid JSON: Expecting value at column 15",
        f"{path}:4: messages[0].role: unknown role 'robot' (expected one of system, user, assistant)",
        f"{path}:5: messages: missing",
    ]
    assert f"{path}: format messages, 6 records, 2 valid, 4 errors" in out


def _csv_field_too_large(path):
    path.write_text("prompt,completion\nq,a\n" + f"q2,{'x' * 200_000}\nq3,a3\n", encoding="utf-8")


def _parquet_damaged_page(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"some text number {i} " * 20 for i in range(5000)]
    pq.write_table(pa.table({"text": texts}), path, compression="none", row_group_size=1000)
    raw = bytearray(path.read_bytes())
    # Garbage over the middle of the data (footer intact, so the file still opens).
    mid = len(raw) // 2
    raw[mid:mid + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(raw))


def _datasets_missing_arrow(path):
    from datasets import Dataset

    Dataset.from_list([GOOD, GOOD]).save_to_disk(str(path))
    for arrow in path.glob("*.arrow"):
        arrow.unlink()


def _datasets_truncated_arrow(path):
    from datasets import Dataset

    Dataset.from_list([GOOD] * 50).save_to_disk(str(path))
    for arrow in path.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:200])


# (writer, file name, regex of the error line after the path)
@pytest.mark.parametrize("make, name, tail", [
    (_csv_field_too_large, "big.csv", r":3: \(line\): unreadable CSV: field larger than field limit"),
    (_parquet_damaged_page, "bad.parquet", r":\d+: \(file\): damaged Parquet data from row \d+ on"),
    (_datasets_missing_arrow, "ds", r": not a readable datasets folder"),
    (_datasets_truncated_arrow, "ds", r": (not a readable|damaged) datasets folder"),
], ids=["csv-field-limit", "parquet-page", "datasets-no-arrow", "datasets-truncated"])
def test_damaged_containers_are_reported_not_raised(make, name, tail, tmp_path, capsys):
    import re

    path = tmp_path / name
    make(path)
    for argv in (["data", "validate", str(path)], ["data", "clean", str(path), "-o", str(tmp_path / "o.jsonl")]):
        code, out, err = run(argv, capsys)
        assert code != 0, argv
        assert "Traceback" not in out + err
        assert re.search(re.escape(str(path)) + tail, err), err
    assert not (tmp_path / "o.jsonl").exists()
