"""Read a data file into validated `Sample`s, reporting every problem as FILE:LINE: field: message.

`scan` streams one `Item` per record (a sample or a problem) so `clean` and `inspect` never hold
a whole file; `read_samples` collects a scan and adds warnings; `load_samples` is the strict
loader training uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import FORMATS, FieldProblem, detect_format, keys_hint, unknown_format
from tunesmith.data.normalize import exact_key, sample_parts
from tunesmith.data.readers import Loc, ReadProblem, iter_records
from tunesmith.data.schema import Sample
from tunesmith.errors import DataError

# Past this many characters an example is almost surely over any max_len (about 4 chars a token).
LONG_EXAMPLE_CHARS = 32_000


@dataclass
class Problem:
    file: str
    line: int
    field: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        tag = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}: {self.field}: {tag}{self.message}"


@dataclass
class Item:
    """One record of a scan: exactly one of `sample` and `problem` is set."""

    file: str
    line: int
    record: dict | None
    sample: Sample | None = None
    problem: Problem | None = None
    empty: bool = False  # the problem is only an empty field (a removal reason for `clean`)


class Scan:
    """Iterate a file's records as `Item`s; `format` and `records` are known once iteration starts."""

    def __init__(self, path: str | Path, fmt: str = "auto"):
        problem = unknown_format(fmt)
        if problem:
            raise DataError(problem, hint="`tunesmith data formats` lists them with the keys that identify each")
        self.path = Path(path)
        self.name = str(path)
        self.format = None if fmt == "auto" else fmt
        self.records = 0
        # Records read before any had keys that name a format (each one is reported as a problem).
        self.undetectable = 0

    def __iter__(self) -> Iterator[Item]:
        seen_ids: dict[str, str] = {}
        for where, record in iter_records(self.path):
            file, line = (where.file, where.line) if isinstance(where, Loc) else (self.name, where)
            self.records += 1
            if isinstance(record, ReadProblem):
                yield Item(file, line, None, problem=Problem(file, line, record.field, record.message))
                continue
            if self.format is None:
                self.format = detect_format(record)
                if self.format is None:
                    # Keep going: the next record may name the format, and the rest of the file
                    # still deserves validating.
                    self.undetectable += 1
                    yield Item(file, line, record, problem=Problem(file, line, "(record)",
                        f"cannot tell the format from keys {sorted(record)}; expected one of: {keys_hint()} (or pass --format)"))
                    continue
            try:
                sample = FORMATS[self.format].parse(record)
            except FieldProblem as exc:
                yield Item(file, line, record, problem=Problem(file, line, exc.field, exc.message), empty=exc.empty)
                continue
            sample.source = f"{file}:{line}"
            if sample.id is not None:
                if sample.id in seen_ids:
                    yield Item(file, line, record, problem=Problem(
                        file, line, "id", f"duplicate id {sample.id!r} (first at {seen_ids[sample.id]}); ids must be unique"))
                    continue
                seen_ids[sample.id] = sample.source
            yield Item(file, line, record, sample=sample)


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    format: str | None = None
    records: int = 0
    valid: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def sample_warnings(sample: Sample, file: str, line: int) -> Iterator[Problem]:
    """Things that are legal but probably not what the user meant."""
    chars = sum(len(t) for _, t in sample_parts(sample))
    if chars > LONG_EXAMPLE_CHARS:
        yield Problem(file, line, "(record)", f"very long example ({chars} characters, roughly {chars // 4} tokens): "
                      "it will be dropped or truncated at data.max_len", "warning")
    for i in range(1, len(sample.messages)):
        if sample.messages[i]["role"] == sample.messages[i - 1]["role"]:
            yield Problem(file, line, f"messages[{i}].role", f"two {sample.messages[i]['role']} messages in a row; "
                          "many chat templates expect the roles to alternate", "warning")
            break


def prompt_length_problem(sample: Sample, tokenizer, max_len: int, file: str, line: int) -> Problem | None:
    """A prompt longer than `max_len` tokens (rendered with the chat template, as training renders it).

    For a preference pair or unpaired feedback it is an error: no token of an answer would fit, so
    the record can only be dropped. A chat is dropped or truncated by training as before (a warning).
    """
    from tunesmith.data.tokenize import prompt_ids

    if sample.kind == "text" or not sample.messages:
        return None
    n = len(prompt_ids(tokenizer, sample.prompt_messages()))
    if n <= max_len:
        return None
    if sample.kind in ("preference", "unpaired"):
        return Problem(file, line, "prompt", f"{n} tokens, longer than max_len {max_len}: no token of the answer "
                                             "would fit (shorten the prompt or raise data.max_len)")
    return Problem(file, line, "messages", f"the turns before the last answer are {n} tokens, longer than max_len "
                                           f"{max_len}: training drops or truncates this example", "warning")


def empty_file_problem(scan: Scan) -> Problem:
    return Problem(scan.name, 1, "(file)", "no records: the file is empty" if not scan.path.is_dir()
                   else "no records: the folder holds no data (.txt/.md files or a saved datasets folder)")


def read_samples(path: str | Path, fmt: str = "auto", max_errors: int = 0, keep: bool = True, *,
                 tokenizer=None, max_len: int | None = None) -> LoadResult:
    """Read everything, collecting problems rather than stopping at the first (max_errors=0: no cap).

    keep=False counts valid samples without holding them (`data validate` on large files). With a
    tokenizer and `max_len`, prompts longer than max_len are reported too (`prompt_length_problem`)."""
    scan = Scan(path, fmt)
    result = LoadResult(format=scan.format)
    first_seen: dict[bytes, str] = {}
    for item in scan:
        if item.problem is not None:
            result.problems.append(item.problem)
        else:
            long_prompt = (prompt_length_problem(item.sample, tokenizer, max_len, item.file, item.line)
                           if tokenizer is not None and max_len else None)
            if long_prompt is not None:
                result.problems.append(long_prompt)
            if long_prompt is None or long_prompt.severity != "error":
                result.valid += 1
                if keep:
                    result.samples.append(item.sample)
            result.problems.extend(sample_warnings(item.sample, item.file, item.line))
            # A 16-byte digest per record keeps this check cheap on large files.
            digest = hashlib.blake2b(exact_key(item.sample).encode(), digest_size=16).digest()
            if digest in first_seen:
                result.problems.append(Problem(item.file, item.line, "(record)",
                                               f"same content as {first_seen[digest]} (`tunesmith data clean` removes it)", "warning"))
            else:
                first_seen[digest] = item.sample.source
        if max_errors and len(result.errors) >= max_errors:
            break
    result.format, result.records = scan.format, scan.records
    if scan.records == 0:
        result.problems.append(empty_file_problem(scan))
    return result


def load_samples(path: str | Path, fmt: str = "auto", max_errors_shown: int = 10) -> list[Sample]:
    """Strict loading for training: any error stops with a clear message listing the first few."""
    result = read_samples(path, fmt)
    errors = result.errors
    if errors:
        shown = "\n".join(f"  {e}" for e in errors[:max_errors_shown])
        more = f"\n  ... and {len(errors) - max_errors_shown} more" if len(errors) > max_errors_shown else ""
        raise DataError(f"{len(errors)} problem(s) in {path}:\n{shown}{more}",
                        hint=f"run `tunesmith data validate {path}` for the full list; `tunesmith data clean {path} "
                             "-o clean.jsonl` writes a copy without empty answers and duplicates")
    return result.samples
