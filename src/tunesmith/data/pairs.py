"""`data pairs`: a preference set from an evaluation's judged answers.

`tunesmith eval --judge ...` writes, in predictions.jsonl, every system's answer per example and,
on the tuned system's rows, the judge's two verdicts (tuned as answer A, then as answer B) against
one baseline. A pair is kept only when both orders name the same winner; a tie in either order or
two orders that disagree (position bias) drop it. The winner's answer is `chosen`, the other's
`rejected`, and the prompt is the one the tuned system answered (no few-shot turns).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.data.convert import to_preference
from tunesmith.data.formats import FORMATS, FieldProblem
from tunesmith.data.schema import Sample
from tunesmith.data.writers import check_output, open_writer
from tunesmith.errors import DataError

# Why a judged example gives no pair, in the order they are checked.
DROP_REASONS = ("missing_answer", "judge_tie", "orders_disagree", "empty_answer", "same_answer")


@dataclass
class PairsSummary:
    predictions: str
    output: str
    judge: str | None
    systems: list[str]            # [tuned, the baseline it was judged against]
    judged: int = 0
    kept: int = 0
    chosen_by_system: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def as_dict(self) -> dict:
        return asdict(self)


def predictions_file(path: str | Path) -> Path:
    """predictions.jsonl itself, or the eval (or training run) folder that holds it."""
    path = Path(path)
    hint = "give the folder `tunesmith eval -o` (or a training run with eval) wrote, or its predictions.jsonl"
    if path.is_dir():
        if not (path / "predictions.jsonl").is_file():
            raise DataError(f"{path}: no predictions.jsonl in this folder", hint=hint)
        return path / "predictions.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found", hint=hint)
    return path


def _rows(file: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(file, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{line_no}: invalid JSON: {exc.msg} at column {exc.colno}",
                                hint="predictions.jsonl is written by `tunesmith eval`; re-run it") from None
            if isinstance(row, dict):
                rows.append((line_no, row))
    return rows


def _judge_name(file: Path) -> str | None:
    report = file.with_name("report.json")
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("judge", {}).get("judge")
    except (OSError, ValueError, AttributeError):
        return None


def build_pairs(run: str | Path, out: str | Path) -> PairsSummary:
    """Write the kept pairs to `out` (preference format, atomically) and return the counts."""
    file = predictions_file(run)
    out = check_output(out)
    rows = _rows(file)
    judged = [(line, r) for line, r in rows if isinstance(r.get("judge"), dict) and "prediction" in r]
    if not judged:
        raise DataError(f"{file}: no judge verdicts: this evaluation ran without a judge",
                        hint="run eval with --judge local:MODEL or --judge openai:MODEL (eval.judge), then "
                             "`tunesmith data pairs` on its folder")
    answers = {(r.get("system"), r.get("id")): r for _, r in rows if "prediction" in r and "system" in r}
    tuned = judged[0][1]["system"]
    against = judged[0][1]["judge"].get("against")
    summary = PairsSummary(str(file), str(out), _judge_name(file), [tuned, against], judged=len(judged),
                           chosen_by_system={tuned: 0, against: 0})
    records: list[dict] = []
    for line, row in judged:
        verdict = row["judge"]
        other = answers.get((verdict.get("against"), row.get("id")))
        reason = None
        if other is None:
            reason = "missing_answer"
        elif verdict.get("outcome") not in ("win", "loss"):
            reason = "judge_tie" if "tie" in (verdict.get("tuned_first"), verdict.get("tuned_second")) \
                else "orders_disagree"
        else:
            win = verdict["outcome"] == "win"
            chosen, rejected = (row, other) if win else (other, row)
            if not str(chosen["prediction"]).strip() or not str(rejected["prediction"]).strip():
                reason = "empty_answer"
            elif str(chosen["prediction"]).strip() == str(rejected["prediction"]).strip():
                reason = "same_answer"
        if reason is not None:
            summary.dropped[reason] += 1
            continue
        record = _record(file, line, row, chosen, rejected)
        summary.chosen_by_system[chosen["system"]] = summary.chosen_by_system.get(chosen["system"], 0) + 1
        records.append(record)
    summary.kept = len(records)
    if not records:
        why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary.dropped.items() if n)
        raise DataError(f"{file}: no pair kept out of {summary.judged} judged examples ({why}); nothing written to {out}",
                        hint="a pair needs the judge to prefer one answer in both orders; try a stronger judge")
    with open_writer(out) as write:
        for record in records:
            write(record)
    return summary


def _record(file: Path, line: int, row: dict, chosen: dict, rejected: dict) -> dict:
    prompt = row.get("prompt")
    try:
        if not isinstance(prompt, list):
            raise FieldProblem("prompt", "expected the list of messages eval writes")
        sample = Sample(messages=prompt, chosen=str(chosen["prediction"]), rejected=str(rejected["prediction"]),
                        id=None if row.get("id") is None else str(row["id"]))
        record = to_preference(sample)
        FORMATS["preference"].parse(record)   # what is written reads back as a valid pair
    except FieldProblem as exc:
        raise DataError(f"{file}:{line}: {exc.field}: {exc.message}",
                        hint="predictions.jsonl is written by `tunesmith eval`; re-run it") from None
    return {**record, "chosen_system": chosen["system"], "rejected_system": rejected["system"]}
