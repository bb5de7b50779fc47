"""`data clean`: normalise, drop empty / over- or under-long / duplicate examples, report why.

The file is streamed in batches: each batch is normalised, checked against the exact-duplicate
digests and the near-duplicate index, length-filtered with the model's tokenizer when asked,
and the survivors are written at once. Memory holds one batch, a 16-byte digest per example and
the near-duplicate index (one signature per kept example), never the data itself.

Checks run in a fixed order and each removed example is counted under the first reason that
fires: empty field, exact duplicate, too short, too long, near duplicate. Input order decides
which member of a duplicate cluster is kept (the first), so the same input gives the same output.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.data.dedup import NearDupIndex, NearDupParams, exact_digest
from tunesmith.data.load import Item, Scan, empty_file_problem
from tunesmith.data.normalize import empty_part, normalize_sample, preview
from tunesmith.data.schema import Sample
from tunesmith.data.writers import check_output, open_writer
from tunesmith.errors import DataError

REASONS = ("empty_response", "empty_prompt", "empty_text", "exact_duplicate", "too_short", "too_long", "near_duplicate")
_ANSWER_FIELDS = ("output", "completion", "chosen", "rejected")


@dataclass
class CleanOptions:
    normalize: bool = True
    exact_dedup: bool = True
    near_dedup: bool = True
    near: NearDupParams = field(default_factory=NearDupParams)
    min_tokens: int = 0              # 0: no lower bound
    max_tokens: int | None = None    # None: no upper bound
    fmt: str = "auto"
    batch_size: int = 2048
    examples_per_reason: int = 3
    max_errors_shown: int = 20

    @property
    def needs_tokenizer(self) -> bool:
        return self.min_tokens > 0 or self.max_tokens is not None


@dataclass
class CleanReport:
    input: str
    output: str
    format: str | None
    records: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, list[dict]] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_removed(self) -> int:
        return sum(self.removed.values())

    def note(self, reason: str, sample_or_source, limit: int, **extra) -> None:
        self.removed[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < limit:
            if isinstance(sample_or_source, Sample):
                shown.append({"source": sample_or_source.source, "text": preview(sample_or_source), **extra})
            else:
                shown.append({"source": sample_or_source, **extra})

    def as_dict(self) -> dict:
        out = asdict(self)
        out["removed_total"] = self.total_removed
        return out


def _empty_reason(item: Item) -> str:
    """Which removal reason an empty field read by the parser is (before any normalisation)."""
    fld = item.problem.field
    if fld == "text":
        return "empty_text"
    if fld in _ANSWER_FIELDS:
        return "empty_response"
    m = re.match(r"(\w+)\[(\d+)\]", fld)
    if m and isinstance(item.record, dict):
        turns = item.record.get(m.group(1))
        if isinstance(turns, list) and int(m.group(2)) < len(turns) and isinstance(turns[int(m.group(2))], dict):
            turn = turns[int(m.group(2))]
            role = turn.get("role", turn.get("from"))
            return "empty_response" if role in ("assistant", "gpt", "chatgpt") else "empty_prompt"
    return "empty_prompt"


class Cleaner:
    def __init__(self, options: CleanOptions, tokenizer=None, on_batch=None):
        if options.needs_tokenizer and tokenizer is None:
            raise ValueError("token-length filters need a tokenizer")
        self.opt = options
        self.tokenizer = tokenizer
        self.on_batch = on_batch  # called with (records read, kept so far) after each batch: progress
        self.seen: dict[bytes, str] = {}
        self.index = NearDupIndex(options.near) if options.near_dedup else None
        self.kept_sources: list[str] = []

    def _filter_batch(self, batch: list[Sample], report: CleanReport) -> list[Sample]:
        if self.opt.needs_tokenizer:
            from tunesmith.data.tokenize import token_lengths

            survivors = []
            for sample, n in zip(batch, token_lengths(self.tokenizer, batch)):
                if n < self.opt.min_tokens:
                    report.note("too_short", sample, self.opt.examples_per_reason, tokens=n)
                elif self.opt.max_tokens is not None and n > self.opt.max_tokens:
                    report.note("too_long", sample, self.opt.examples_per_reason, tokens=n)
                else:
                    survivors.append(sample)
            batch = survivors
        if self.index is None:
            return batch
        kept = []
        for sample, hit in zip(batch, self.index.find_duplicates(self.index.signatures(batch))):
            if hit is not None:
                report.note("near_duplicate", sample, self.opt.examples_per_reason, duplicate_of=self.kept_sources[hit])
            else:
                self.kept_sources.append(sample.source)
                kept.append(sample)
        return kept

    def run(self, path: str | Path, out: str | Path) -> CleanReport:
        start = time.perf_counter()
        out = check_output(out)
        scan = Scan(path, self.opt.fmt)
        report = CleanReport(str(path), str(out), scan.format,
                             options={k: v for k, v in asdict(self.opt).items() if k != "max_errors_shown"})
        errors: list = []
        n_errors = 0
        batch: list[Sample] = []
        with open_writer(out) as write:
            def flush() -> None:
                for sample in self._filter_batch(batch, report):
                    write(sample.to_dict())
                    report.kept += 1
                batch.clear()
                if self.on_batch is not None:
                    self.on_batch(scan.records, report.kept)

            for item in scan:
                if item.problem is not None:
                    if item.empty:
                        report.note(_empty_reason(item), f"{item.file}:{item.line}", self.opt.examples_per_reason,
                                    field=item.problem.field)
                    else:
                        n_errors += 1
                        if len(errors) < self.opt.max_errors_shown:
                            errors.append(item.problem)
                    continue
                if n_errors:
                    continue  # the run will fail: only keep collecting problems
                sample = normalize_sample(item.sample) if self.opt.normalize else item.sample
                empty = empty_part(sample)
                if empty:
                    report.note(empty[0], sample.source, self.opt.examples_per_reason, field=empty[1])
                    continue
                if self.opt.exact_dedup:
                    digest = exact_digest(sample)
                    if digest in self.seen:
                        report.note("exact_duplicate", sample, self.opt.examples_per_reason, duplicate_of=self.seen[digest])
                        continue
                    self.seen[digest] = sample.source
                batch.append(sample)
                if len(batch) >= self.opt.batch_size:
                    flush()
            if scan.records == 0:
                n_errors += 1
                errors.append(empty_file_problem(scan))
            if n_errors:
                shown = "\n".join(f"  {e}" for e in errors)
                more = f"\n  ... and {n_errors - len(errors)} more" if n_errors > len(errors) else ""
                # Raising inside the writer discards its temporary file: nothing appears at `out`.
                raise DataError(f"{n_errors} problem(s) in {path}; nothing written to {out}:\n{shown}{more}",
                                hint=f"fix them (`tunesmith data validate {path}` lists all), then clean again", exit_code=1)
            flush()
        report.format = scan.format
        report.records = scan.records
        report.seconds = round(time.perf_counter() - start, 3)
        return report


def clean_file(path: str | Path, out: str | Path, options: CleanOptions | None = None, tokenizer=None,
               on_batch=None) -> CleanReport:
    return Cleaner(options or CleanOptions(), tokenizer, on_batch).run(path, out)


def default_report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + ".report.json" if out.suffix else out.name + ".report.json")
