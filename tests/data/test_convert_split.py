"""`data convert`, `data split` and `data inspect` through the CLI."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import write_jsonl
from tunesmith.cli import main
from tunesmith.data.load import load_samples
from tunesmith.data.split import split_indices


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _alpaca_rows(n=20):
    rows = [{"instruction": f"Task {i}", "input": f"detail {i}" if i % 2 else "", "output": f"Done {i}."} for i in range(n)]
    rows[3]["system"] = "Be formal."
    return rows


@pytest.mark.parametrize("middle", ["chatml", "sharegpt", "prompt_completion"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_convert_round_trip(tmp_path, capsys, middle, suffix):
    rows = _alpaca_rows()
    if middle == "prompt_completion":
        del rows[3]["system"]  # prompt/completion has no system message
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    mid, back = tmp_path / f"mid{suffix}", tmp_path / f"back{suffix}"
    assert run(["data", "convert", str(src), "-o", str(mid), "--to", middle], capsys)[0] == 0
    assert run(["data", "convert", str(mid), "-o", str(back), "--to", "alpaca"], capsys)[0] == 0
    original = [s.messages for s in load_samples(src)]
    assert [s.messages for s in load_samples(mid)] == original
    assert [s.messages for s in load_samples(back)] == original


def test_convert_refuses_what_the_target_cannot_hold(tmp_path, capsys):
    src = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ])
    code, _, err = run(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl"), "--to", "alpaca"], capsys)
    assert code == 1
    assert f"{src}:2: messages: alpaca holds one user turn and one answer; this conversation has 4 turns" in err
    assert not (tmp_path / "o.jsonl").exists()
    code, _, err = run(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl"), "--to", "yaml"], capsys)
    assert code == 2 and "unknown target format 'yaml'" in err


def test_split_round_trip_and_matches_val_split(tmp_path, capsys):
    rows = [dict(r, id=f"r{i}") for i, r in enumerate(_alpaca_rows(50))]
    src = write_jsonl(tmp_path / "data.jsonl", rows)
    code, out, _ = run(["data", "split", str(src), "--val", "0.1", "--seed", "7", "-o", str(tmp_path / "s")], capsys)
    assert code == 0
    train = [json.loads(x) for x in (tmp_path / "s" / "data.train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "s" / "data.val.jsonl").read_text().splitlines()]
    assert (len(train), len(val)) == (45, 5)
    # Records come out unchanged, each exactly once, in file order.
    assert sorted(train + val, key=lambda r: int(r["id"][1:])) == rows
    assert train == [r for r in rows if r in train]
    # The same draw a run makes for data.val_split with train.seed.
    from tunesmith.pipeline import split_samples

    _, run_val = split_samples(load_samples(src), 0.1, 7)
    assert [s.id for s in run_val] == [r["id"] for r in val]
    # Seeded: the same seed gives the same split, another seed another one.
    assert split_indices(50, 0.1, 7) == split_indices(50, 0.1, 7) != split_indices(50, 0.1, 8)


def test_inspect_reports_counts_lengths_duplicates_and_plot(tmp_path, capsys, tiny_model_dir, tokenizer):
    rng = random.Random(0)
    long_q = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps"]) + str(i) for i in range(80))
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes. " * (i + 1)}]}
            for i in range(10)]
    rows.append(rows[2])                                                                  # exact duplicate
    rows.append({"messages": [{"role": "user", "content": long_q}, {"role": "assistant", "content": "ok"}]})
    near = long_q.split()
    near[40] = "changed"
    rows.append({"messages": [{"role": "user", "content": " ".join(near)}, {"role": "assistant", "content": "ok"}]})
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    png = tmp_path / "len.png"
    code, out, _ = run(["data", "inspect", str(src), "--model", str(tiny_model_dir), "--max-len", "100",
                        "--json", "--plot", str(png)], capsys)
    assert code == 0
    report = json.loads(out)
    from tunesmith.data.tokenize import tokenize_sample

    # Every valid example is measured, the exact duplicate too (training would see it twice).
    lengths = sorted(len(tokenize_sample(tokenizer, s)[0]) for s in load_samples(src))
    assert (report["format"], report["records"], report["valid"], report["errors"]) == ("messages", 13, 13, 0)
    assert (report["exact_duplicates"], report["near_duplicates"]) == (1, 1)
    assert report["tokens"]["min"] == lengths[0] and report["tokens"]["max"] == lengths[-1]
    assert report["tokens"]["p50"] == lengths[(len(lengths) + 1) // 2 - 1]
    assert report["over_max_len"] == sum(n > 100 for n in lengths) > 0
    assert report["packing"]["examples"] == sum(n <= 100 for n in lengths)
    assert 0 < report["packing"]["efficiency"] <= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(["data", "inspect", str(src), "--model", str(tiny_model_dir)], capsys)
    assert code == 0 and "near duplicates" in out and "efficiency" in out


def test_inspect_lengths_count_every_copy_of_a_duplicate(tmp_path, capsys, tiny_model_dir, tokenizer):
    from tunesmith.data.tokenize import tokenize_sample

    long = {"messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(120))},
                         {"role": "assistant", "content": "ok"}]}
    short = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(2)]
    src = write_jsonl(tmp_path / "dups.jsonl", [long, short[0], long, short[1], long])
    code, out, _ = run(["data", "inspect", str(src), "--model", str(tiny_model_dir), "--max-len", "100", "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    n_long = len(tokenize_sample(tokenizer, load_samples(src)[0])[0])
    assert n_long > 100
    assert (report["exact_duplicates"], report["near_duplicates"]) == (2, 0)   # copies are not near duplicates too
    assert report["over_max_len"] == 3 and report["tokens"]["max"] == n_long and report["tokens"]["p50"] == n_long
    assert report["packing"]["examples"] == 2


def test_inspect_max_len_defaults_to_what_a_run_makes_of_auto(tmp_path, capsys, tiny_model_dir, tokenizer):
    from tests.conftest import make_tiny_llama
    from tunesmith.data.lengths import resolve_max_len
    from tunesmith.data.tokenize import tokenize_sample

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "yes " * (10 * i + 5)}]}
            for i in range(20)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    lengths = sorted(len(tokenize_sample(tokenizer, s)[0]) for s in load_samples(src))
    code, out, _ = run(["data", "inspect", str(src), "--model", str(tiny_model_dir), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    expected = -(-lengths[-1] // 64) * 64          # 99 % of 20 examples is all of them: the longest sets it
    assert report["max_len_setting"] == "auto" and report["max_len"] == expected
    assert report["over_max_len"] == 0 and report["packing"]["examples"] == 20
    # A model with a 128-token context caps auto, as in a run.
    short = make_tiny_llama(tokenizer, tmp_path / "short", max_positions=128)
    code, out, _ = run(["data", "inspect", str(src), "--model", str(short), "--json", "--max-len", "auto"], capsys)
    report = json.loads(out)
    assert report["max_len"] == resolve_max_len("auto", lengths, 128).resolved == 128
    assert report["over_max_len"] == sum(n > 128 for n in lengths) > 0
    code, out, _ = run(["data", "inspect", str(src), "--model", str(short)], capsys)
    assert code == 0 and "over max_len auto = 128" in " ".join(out.split())
    # validate --max-len auto checks prompts against the context, the most auto can become.
    long_prompt = [{"prompt": "word " * 150, "chosen": "a", "rejected": "b"}]
    pairs = write_jsonl(tmp_path / "p.jsonl", long_prompt)
    code, out, err = run(["data", "validate", str(pairs), "--model", str(short), "--max-len", "auto"], capsys)
    assert code == 1 and "longer than max_len 128" in err
    code, _, err = run(["data", "validate", str(pairs), "--model", str(short), "--max-len", "lots"], capsys)
    assert code == 2 and "--max-len must be a positive number of tokens, got lots" in err and "'auto'" in err


def test_split_writes_both_files_or_neither(tmp_path, capsys):
    src = write_jsonl(tmp_path / "data.jsonl", _alpaca_rows(10))
    out = tmp_path / "s"
    (out / "data.val.jsonl").mkdir(parents=True)        # the val file cannot be written
    code, _, err = run(["data", "split", str(src), "--val", "0.2", "-o", str(out)], capsys)
    assert code == 2 and f"{out / 'data.val.jsonl'} is a folder" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["data.val.jsonl"]   # no train file, no temporary files


def test_split_takes_back_the_first_file_when_the_second_cannot_be_moved(tmp_path):
    from tunesmith.data.split import write_together

    train, val = tmp_path / "d.train.jsonl", tmp_path / "d.val.jsonl"
    val.mkdir()   # written fine in the staging folder, then the rename onto a folder fails
    with pytest.raises(OSError):
        write_together([(train, [{"a": 1}]), (val, [{"a": 2}])])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.val.jsonl"] and not any(val.iterdir())
