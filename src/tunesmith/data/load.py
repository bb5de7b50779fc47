"""Read a data file into validated `Sample`s, reporting every problem as FILE:LINE: field: message."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import FORMATS, FieldProblem, detect_format
from tunesmith.data.readers import ReadProblem, iter_records
from tunesmith.data.schema import Sample
from tunesmith.errors import DataError


@dataclass
class Problem:
    file: str
    line: int
    field: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    format: str | None = None
    records: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def read_samples(path: str | Path, fmt: str = "auto", max_errors: int = 0) -> LoadResult:
    """Read everything, collecting problems rather than stopping at the first (max_errors=0: no cap)."""
    path = Path(path)
    result = LoadResult(format=None if fmt == "auto" else fmt)
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown data format '{fmt}'", hint=f"use one of: auto, {', '.join(FORMATS)}")
    seen_ids: dict[str, int] = {}
    name = str(path)
    for line, record in iter_records(path):
        result.records += 1
        if isinstance(record, ReadProblem):
            result.problems.append(Problem(name, line, record.field, record.message))
        else:
            if result.format is None:
                result.format = detect_format(record)
                if result.format is None:
                    result.problems.append(Problem(name, line, "(record)",
                        f"cannot tell the format from keys {sorted(record)}; expected one of: "
                        "messages, conversations, instruction+output, prompt+completion, prompt+chosen+rejected, text"))
                    break
            try:
                sample = FORMATS[result.format].parse(record)
            except FieldProblem as exc:
                result.problems.append(Problem(name, line, exc.field, exc.message))
            else:
                sample.source = f"{name}:{line}"
                if sample.id is not None:
                    if sample.id in seen_ids:
                        result.problems.append(Problem(name, line, "id", f"duplicate id {sample.id!r} (first on line {seen_ids[sample.id]})"))
                        continue
                    seen_ids[sample.id] = line
                result.samples.append(sample)
        if max_errors and len(result.errors) >= max_errors:
            break
    if result.records == 0:
        result.problems.append(Problem(name, 1, "(file)", "no records: the file is empty"))
    return result


def load_samples(path: str | Path, fmt: str = "auto", max_errors_shown: int = 10) -> list[Sample]:
    """Strict loading for training: any error stops with a clear message listing the first few."""
    result = read_samples(path, fmt)
    errors = result.errors
    if errors:
        shown = "\n".join(f"  {e}" for e in errors[:max_errors_shown])
        more = f"\n  ... and {len(errors) - max_errors_shown} more" if len(errors) > max_errors_shown else ""
        raise DataError(f"{len(errors)} problem(s) in {path}:\n{shown}{more}",
                        hint=f"run `tunesmith data validate {path}` for the full list")
    return result.samples
