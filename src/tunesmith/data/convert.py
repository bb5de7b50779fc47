"""`data convert`: canonical samples out as another format's records.

Each target is one function from a `Sample` to a record, registered under its name; a sample the
target cannot hold (a multi-turn chat as Alpaca) raises `FieldProblem`, reported as FILE:LINE.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tunesmith.data.formats import FieldProblem
from tunesmith.data.load import Scan, empty_file_problem
from tunesmith.data.schema import Sample
from tunesmith.data.writers import check_output, open_writer
from tunesmith.errors import DataError

TARGETS: dict[str, Callable[[Sample], dict | list[dict]]] = {}


def target(*names: str):
    def wrap(fn):
        for n in names:
            TARGETS[n] = fn
        return fn
    return wrap


def _with_id(sample: Sample, record: dict) -> dict:
    return {"id": sample.id, **record} if sample.id is not None else record


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _chat_only(sample: Sample, name: str) -> None:
    if sample.kind != "chat":
        raise FieldProblem("(record)", f"{_a(sample.kind)} record cannot be written as {name}")


def _single_turn(sample: Sample, name: str) -> tuple[str | None, str, str]:
    _chat_only(sample, name)
    msgs = sample.messages
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
    rest = msgs[1:] if system is not None else msgs
    if [m["role"] for m in rest] != ["user", "assistant"]:
        raise FieldProblem("messages", f"{name} holds one user turn and one answer; this conversation has "
                                       f"{len(rest)} turns (convert to chatml or sharegpt instead)")
    return system, rest[0]["content"], rest[1]["content"]


@target("chatml", "messages")
def to_chatml(sample: Sample) -> dict:
    _chat_only(sample, "chatml")
    return _with_id(sample, {"messages": [{"role": m["role"], "content": m["content"]} for m in sample.messages]})


@target("alpaca")
def to_alpaca(sample: Sample) -> dict:
    system, user, answer = _single_turn(sample, "alpaca")
    record = {"instruction": user, "input": "", "output": answer}
    if system is not None:
        record["system"] = system
    return _with_id(sample, record)


@target("sharegpt")
def to_sharegpt(sample: Sample) -> dict:
    _chat_only(sample, "sharegpt")
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return _with_id(sample, {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in sample.messages]})


@target("prompt_completion")
def to_prompt_completion(sample: Sample) -> dict:
    system, user, answer = _single_turn(sample, "prompt_completion")
    if system is not None:
        raise FieldProblem("messages[0]", "prompt_completion has no place for a system message")
    return _with_id(sample, {"prompt": user, "completion": answer})


@target("text")
def to_text(sample: Sample) -> dict:
    if sample.kind != "text":
        raise FieldProblem("(record)", f"{_a(sample.kind)} record cannot be written as text")
    return _with_id(sample, {"text": sample.text})


def _prompt_value(prompt: list[dict]):
    """A single user turn as a plain string, anything longer as its list of messages."""
    return prompt[0]["content"] if len(prompt) == 1 and prompt[0]["role"] == "user" else prompt


def _pair_only(sample: Sample) -> None:
    if sample.kind != "preference":
        raise FieldProblem("(record)", f"{_a(sample.kind)} record has no chosen/rejected pair")


@target("preference")
def to_preference(sample: Sample) -> dict:
    _pair_only(sample)
    return _with_id(sample, {"prompt": _prompt_value(sample.messages), "chosen": sample.chosen,
                             "rejected": sample.rejected})


@target("openai_preference")
def to_openai_preference(sample: Sample) -> dict:
    _pair_only(sample)
    return _with_id(sample, {"input": {"messages": sample.messages},
                             "preferred_output": [{"role": "assistant", "content": sample.chosen}],
                             "non_preferred_output": [{"role": "assistant", "content": sample.rejected}]})


@target("kto")
def to_kto(sample: Sample) -> dict | list[dict]:
    """Unpaired feedback as it is; a preference pair becomes two records (chosen true, rejected false)."""
    if sample.kind == "preference":
        prompt = _prompt_value(sample.messages)
        ids = [None, None] if sample.id is None else [f"{sample.id}:chosen", f"{sample.id}:rejected"]  # ids stay unique
        return [{**({"id": i} if i is not None else {}), "prompt": prompt, "completion": answer, "label": label}
                for i, answer, label in zip(ids, (sample.chosen, sample.rejected), (True, False))]
    if sample.kind != "unpaired":
        raise FieldProblem("(record)", f"{_a(sample.kind)} record has no label; kto needs unpaired feedback or pairs")
    return _with_id(sample, {"prompt": _prompt_value(sample.prompt_messages()), "completion": sample.reference(),
                             "label": sample.label})


def convert_file(path: str | Path, out: str | Path, to: str, fmt: str = "auto", max_errors_shown: int = 20) -> dict:
    """Write every record of `path` as `to`; any problem means no output file at all."""
    if to not in TARGETS:
        raise DataError(f"unknown target format '{to}'", hint=f"use one of {', '.join(TARGETS)}")
    out = check_output(out)
    convert = TARGETS[to]
    scan = Scan(path, fmt)
    errors: list[str] = []
    n_errors = written = 0
    with open_writer(out) as write:
        for item in scan:
            problem = str(item.problem) if item.problem is not None else None
            if problem is None:
                try:
                    record = convert(item.sample)
                except FieldProblem as exc:
                    problem = f"{item.file}:{item.line}: {exc.field}: {exc.message}"
                else:
                    # A target may turn one record into several (a pair into two kto records).
                    records = record if isinstance(record, list) else [record]
                    if not n_errors:
                        for r in records:
                            write(r)
                        written += len(records)
            if problem is not None:
                n_errors += 1
                if len(errors) < max_errors_shown:
                    errors.append(problem)
        if scan.records == 0:
            n_errors += 1
            errors.append(str(empty_file_problem(scan)))
        if n_errors:
            more = f"\n  ... and {n_errors - len(errors)} more" if n_errors > len(errors) else ""
            raise DataError(f"{n_errors} problem(s) converting {path} to {to}; nothing written to {out}:\n"
                            + "\n".join(f"  {e}" for e in errors) + more, exit_code=1)
    return {"input": str(path), "output": str(out), "from": scan.format, "to": to, "records": written}
