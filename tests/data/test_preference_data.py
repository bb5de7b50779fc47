"""Preference data (issue 16): OpenAI's preference JSONL and KTO's unpaired feedback read into `Sample`s,
written back by `data convert` / `data clean`, and every bad record reported as FILE:LINE by `data validate`."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main
from tunesmith.data.clean import clean_file
from tunesmith.data.formats import detect_format
from tunesmith.data.load import load_samples, read_samples
from tunesmith.data.tokenize import prompt_ids

SYSTEM = {"role": "system", "content": "Answer in one sentence."}
USER = {"role": "user", "content": "Why is the sky blue?"}


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _openai(prompt, good, bad, **extra):
    return {"input": {"messages": prompt, **extra}, "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


OPENAI = [
    _openai([SYSTEM, USER], "Rayleigh scattering.", "Because of the ocean, which is blue, and the sky copies it.",
            tools=[{"type": "function", "function": {"name": "search"}}], parallel_tool_calls=False),
    _openai([{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "2+2?"}], "4", "Five."),
]
KTO = [
    {"prompt": "Why is the sky blue?", "completion": "Rayleigh scattering.", "label": True},
    {"prompt": [SYSTEM, USER], "completion": [{"role": "assistant", "content": "Magic."}], "label": False, "id": "k2"},
]


def test_openai_preference_records_become_pairs(tmp_path):
    assert detect_format(OPENAI[0]) == "openai_preference"
    result = read_samples(_write(tmp_path / "openai.jsonl", OPENAI))
    assert result.errors == [] and result.format == "openai_preference"
    first, second = result.samples
    assert first.kind == "preference"
    assert first.messages == [SYSTEM, USER]          # tools are accepted, not used
    assert (first.chosen, first.rejected) == ("Rayleigh scattering.",
                                              "Because of the ocean, which is blue, and the sky copies it.")
    assert second.messages == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}]
    assert (second.chosen, second.rejected) == ("4", "Five.")


def test_kto_records_become_unpaired_samples_and_write_back(tmp_path):
    assert detect_format(KTO[0]) == "kto"
    # prompt + completion alone, or with a label that is not true/false, is still a prompt/completion chat.
    assert detect_format({"prompt": "p", "completion": "c"}) == "prompt_completion"
    assert detect_format({"prompt": "p", "completion": "c", "label": "positive"}) == "prompt_completion"
    src = _write(tmp_path / "kto.jsonl", KTO)
    samples = load_samples(src)
    assert [(s.kind, s.label, s.messages) for s in samples] == [
        ("unpaired", True, [USER, {"role": "assistant", "content": "Rayleigh scattering."}]),
        ("unpaired", False, [SYSTEM, USER, {"role": "assistant", "content": "Magic."}]),
    ]
    assert samples[1].prompt_messages() == [SYSTEM, USER] and samples[1].reference() == "Magic."
    assert samples[1].to_dict() == {"id": "k2", "prompt": [SYSTEM, USER], "completion": "Magic.", "label": False}
    # `data clean` writes Sample.to_dict; it reads back as the same samples.
    clean_file(src, tmp_path / "clean.jsonl")
    back = load_samples(tmp_path / "clean.jsonl")
    assert [(s.label, s.messages, s.id) for s in back] == [(s.label, s.messages, s.id) for s in samples]


def test_same_text_with_opposite_labels_is_not_a_duplicate(tmp_path):
    rows = [{"prompt": "Q", "completion": "A", "label": True}, {"prompt": "Q", "completion": "A", "label": False},
            {"prompt": "Q", "completion": "A", "label": True}]
    result = read_samples(_write(tmp_path / "kto.jsonl", rows))
    assert [str(w) for w in result.warnings] == [
        f"{tmp_path / 'kto.jsonl'}:3: (record): warning: same content as {tmp_path / 'kto.jsonl'}:1 "
        "(`tunesmith data clean` removes it)"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_convert_round_trips(tmp_path, capsys, suffix):
    pairs = [{"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "Magic.", "id": "a"},
             {"prompt": [SYSTEM, USER], "chosen": [{"role": "assistant", "content": "Scattering."}],
              "rejected": [{"role": "assistant", "content": "Paint."}], "id": "b"}]
    src = _write(tmp_path / "pairs.jsonl", pairs)
    mid, back = tmp_path / f"openai{suffix}", tmp_path / f"back{suffix}"
    assert run(["data", "convert", str(src), "-o", str(mid), "--to", "openai_preference"], capsys)[0] == 0
    assert run(["data", "convert", str(mid), "-o", str(back), "--to", "preference"], capsys)[0] == 0
    original = [(s.messages, s.chosen, s.rejected, s.id) for s in load_samples(src)]
    assert read_samples(mid).format == "openai_preference"
    assert [(s.messages, s.chosen, s.rejected, s.id) for s in load_samples(mid)] == original
    assert [(s.messages, s.chosen, s.rejected, s.id) for s in load_samples(back)] == original

    # A pair becomes two kto records, chosen desirable and rejected undesirable, with ids kept unique.
    kto = tmp_path / f"kto{suffix}"
    code, out, _ = run(["data", "convert", str(src), "-o", str(kto), "--to", "kto"], capsys)
    assert code == 0 and "wrote 4 records as kto" in out
    got = load_samples(kto)
    assert [(s.id, s.label, s.reference()) for s in got] == [
        ("a:chosen", True, "Rayleigh scattering."), ("a:rejected", False, "Magic."),
        ("b:chosen", True, "Scattering."), ("b:rejected", False, "Paint.")]
    assert got[2].prompt_messages() == [SYSTEM, USER]
    again = tmp_path / f"kto2{suffix}"
    assert run(["data", "convert", str(kto), "-o", str(again), "--to", "kto"], capsys)[0] == 0
    assert [(s.id, s.label, s.messages) for s in load_samples(again)] == [(s.id, s.label, s.messages) for s in got]

    # Unpaired feedback has no pair and no plain chat to offer: refused by FILE:LINE, nothing written.
    line = 1 if suffix == ".jsonl" else 2  # a JSON array's first record starts on line 2
    code, _, err = run(["data", "convert", str(kto), "-o", str(tmp_path / "no.jsonl"), "--to", "preference"], capsys)
    assert code == 1 and f"{kto}:{line}: (record): an unpaired record has no chosen/rejected pair" in err
    code, _, err = run(["data", "convert", str(kto), "-o", str(tmp_path / "no.jsonl"), "--to", "chatml"], capsys)
    assert code == 1 and f"{kto}:{line}: (record): an unpaired record cannot be written as chatml" in err
    assert not (tmp_path / "no.jsonl").exists()


def test_parquet_refuses_a_column_of_mixed_types_clearly(tmp_path, capsys):
    # One prompt is a plain string, the other a list of messages: Parquet cannot hold both in a column.
    src = _write(tmp_path / "pairs.jsonl", [GOOD_PAIR, {"prompt": [SYSTEM, USER], "chosen": "a", "rejected": "b"}])
    out = tmp_path / "pairs.parquet"
    code, _, err = run(["data", "convert", str(src), "-o", str(out), "--to", "kto"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{out}: cannot write Parquet: column 'prompt' holds list and str values in different rows" in err
    assert not out.exists()
    # Prompts of one kind write and read back.
    src = _write(tmp_path / "same.jsonl", [GOOD_PAIR, {"prompt": "Q2?", "chosen": "a", "rejected": "b"}])
    assert run(["data", "convert", str(src), "-o", str(out), "--to", "openai_preference"], capsys)[0] == 0
    assert [(s.chosen, s.rejected) for s in load_samples(out)] == [("Good.", "Bad."), ("a", "b")]


GOOD_PAIR = {"prompt": "Q?", "chosen": "Good.", "rejected": "Bad."}
GOOD_OPENAI = _openai([USER], "Good.", "Bad.")
GOOD_KTO = {"prompt": "Q?", "completion": "A.", "label": True}

# (name, records, the exact error line after "FILE:"); record 1 is always good and names the format.
CASES = [
    ("pair_same_answers", [GOOD_PAIR, {"prompt": "Q?", "chosen": "Same.", "rejected": " Same. "}],
     "2: rejected: same text as the chosen answer; a pair needs two different answers"),
    ("pair_same_message_answers", [GOOD_PAIR, {"prompt": "Q?", "chosen": [{"role": "assistant", "content": "X"}],
                                               "rejected": [{"role": "assistant", "content": "X"}]}],
     "2: rejected: same text as the chosen answer; a pair needs two different answers"),
    ("pair_missing_rejected", [GOOD_PAIR, {"prompt": "Q?", "chosen": "Good."}], "2: rejected: missing"),
    ("pair_empty_chosen", [GOOD_PAIR, {"prompt": "Q?", "chosen": "  ", "rejected": "Bad."}], "2: chosen: empty"),
    ("pair_empty_prompt", [GOOD_PAIR, {"prompt": "", "chosen": "a", "rejected": "b"}], "2: prompt: empty"),
    ("pair_empty_prompt_list", [GOOD_PAIR, {"prompt": [], "chosen": "a", "rejected": "b"}],
     "2: prompt: empty conversation"),
    ("pair_prompt_ends_with_assistant", [GOOD_PAIR, {"prompt": [USER, {"role": "assistant", "content": "Hm"}],
                                                     "chosen": "a", "rejected": "b"}],
     "2: prompt: the prompt must end with the user turn the answers reply to (its last message is assistant)"),
    ("pair_bad_type", [GOOD_PAIR, {"prompt": "Q?", "chosen": 3, "rejected": "b"}],
     "2: chosen: expected a string or a list of messages, got int"),
    ("openai_same_answers", [GOOD_OPENAI, _openai([USER], "Same", "Same")],
     "2: non_preferred_output: same text as the chosen answer; a pair needs two different answers"),
    ("openai_missing_messages", [GOOD_OPENAI, {**GOOD_OPENAI, "input": {"tools": []}}], "2: input.messages: missing"),
    ("openai_missing_output", [GOOD_OPENAI, {"input": {"messages": [USER]}, "preferred_output": GOOD_OPENAI["preferred_output"]}],
     "2: non_preferred_output: missing"),
    ("openai_empty_output", [GOOD_OPENAI, _openai([USER], "", "Bad.")], "2: preferred_output[0].content: empty"),
    ("openai_empty_prompt_turn", [GOOD_OPENAI, _openai([{"role": "user", "content": " "}], "a", "b")],
     "2: input.messages[0].content: empty"),
    ("openai_two_outputs", [GOOD_OPENAI, {**GOOD_OPENAI, "preferred_output": [{"role": "assistant", "content": "a"}] * 2}],
     "2: preferred_output: expected one assistant message, got 2 messages"),
    ("kto_label_string", [GOOD_KTO, {"prompt": "Q?", "completion": "A.", "label": "yes"}],
     "2: label: expected true or false, got str 'yes'"),
    ("kto_label_int", [GOOD_KTO, {"prompt": "Q?", "completion": "A.", "label": 1}],
     "2: label: expected true or false, got int 1"),
    ("kto_label_missing", [GOOD_KTO, {"prompt": "Q?", "completion": "A.", "label": None}], "2: label: missing"),
    ("kto_label_missing_key", [GOOD_KTO, {"prompt": "Q?", "completion": "A."}], "2: label: missing"),
    ("kto_empty_completion", [GOOD_KTO, {"prompt": "Q?", "completion": "", "label": False}], "2: completion: empty"),
]


@pytest.mark.parametrize("name,rows,tail", CASES, ids=[c[0] for c in CASES])
def test_validate_reports_bad_preference_records(tmp_path, capsys, name, rows, tail):
    path = _write(tmp_path / f"{name}.jsonl", rows)
    code, out, err = run(["data", "validate", str(path)], capsys)
    assert code == 1
    assert err.splitlines() == [f"{path}:{tail}"]
    assert f"{path}: format" in out and "2 records, 1 valid, 1 errors" in out
    assert "Traceback" not in out + err
    # Training refuses the file with the same line.
    code, _, err = run(["data", "convert", str(path), "-o", str(tmp_path / "o.jsonl"), "--to", "preference"], capsys)
    assert code == 1 and f"{path}:{tail}" in err and not (tmp_path / "o.jsonl").exists()


def test_validate_checks_prompt_length_with_max_len(tmp_path, capsys, tokenizer, tiny_model_dir):
    long_q = "Explain " + "the sky and the sea " * 10
    system = {"role": "system", "content": "Answer in one sentence, politely and plainly, for a child."}
    rows = [GOOD_PAIR, {"prompt": long_q, "chosen": "Short.", "rejected": "No."},
            {"prompt": [system, USER], "chosen": "a", "rejected": "b"}]
    path = _write(tmp_path / "pairs.jsonl", rows)
    # Measured as training renders them: SmolLM2's template adds its own system prompt to a lone user turn.
    n_long = len(prompt_ids(tokenizer, [{"role": "user", "content": long_q}]))
    n_short = len(prompt_ids(tokenizer, [{"role": "user", "content": "Q?"}]))
    n_system = len(prompt_ids(tokenizer, [system, USER]))
    max_len = n_short
    assert n_long > max_len and n_system > max_len
    # Without --max-len nothing is measured.
    assert run(["data", "validate", str(path)], capsys)[0] == 0
    code, out, err = run(["data", "validate", str(path), "--max-len", str(max_len), "--model", str(tiny_model_dir)],
                         capsys)
    assert code == 1
    assert err.splitlines() == [
        f"{path}:2: prompt: {n_long} tokens, longer than max_len {max_len}: no token of the answer would fit "
        "(shorten the prompt or raise data.max_len)",
        f"{path}:3: prompt: {n_system} tokens, longer than max_len {max_len}: no token of the answer would fit "
        "(shorten the prompt or raise data.max_len)"]
    assert "3 records, 1 valid, 2 errors" in out
    assert run(["data", "validate", str(path), "--max-len", str(n_long), "--model", str(tiny_model_dir)], capsys)[0] == 0

    # KTO prompts are checked the same way; a chat whose early turns are too long only gets a warning.
    kto = _write(tmp_path / "kto.jsonl", [GOOD_KTO, {"prompt": long_q, "completion": "A.", "label": False}])
    result = read_samples(kto, tokenizer=tokenizer, max_len=max_len)
    assert [str(e) for e in result.errors] == [
        f"{kto}:2: prompt: {n_long} tokens, longer than max_len {max_len}: no token of the answer would fit "
        "(shorten the prompt or raise data.max_len)"]
    chat = _write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": long_q},
                                                           {"role": "assistant", "content": "A."}]}])
    result = read_samples(chat, tokenizer=tokenizer, max_len=max_len)
    assert result.errors == [] and result.valid == 1
    assert [str(w) for w in result.warnings] == [
        f"{chat}:1: messages: warning: the turns before the last answer are {n_long} tokens, longer than max_len "
        f"{max_len}: training drops or truncates this example"]
    code, _, err = run(["data", "validate", str(path), "--max-len", "0"], capsys)
    assert code == 2 and "--max-len must be a positive number of tokens, got 0" in err
