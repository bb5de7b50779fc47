"""A served traffic log (serve/traffic.py) turned into a dataset: filtered, cleaned, split, relabelled.

OpenPipe's loop: serve, log every request with its tags, then export a dataset from the log. Here:
keep the records of one model / adapter / tag set / time window; drop cut-off answers
(finish_reason "length"); strip a system prompt that every kept record shares (it is the
deployment's, not the task's, and a fine-tune should not need it); remove exact and near
duplicates; and hold part out as a test set. The split goes by a hash of the prompt, so a prompt
never lands on both sides and a record keeps its side as the log grows. An optional teacher
relabels the kept prompts (synth's teacher, cache and accounting).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from tunesmith.config import Section
from tunesmith.data.dedup import NearDupIndex, NearDupParams, exact_digest
from tunesmith.data.formats import FORMATS, FieldProblem
from tunesmith.data.readers import ReadProblem, read_jsonl
from tunesmith.data.writers import check_output, open_writer
from tunesmith.errors import DataError, UserError
from tunesmith.io_utils import write_json


class TrafficOptions(Section):
    model: list[str] = Field(default_factory=list, description="keep requests made to these model names (repeatable; empty: all)")
    adapter: list[str] = Field(default_factory=list, description="keep requests answered by these adapters (repeatable; empty: all)")
    tag: list[str] = Field(default_factory=list, description="keep requests whose metadata has KEY=VALUE, or KEY at all "
                                                             "(repeatable; all must match)")
    since: str | None = Field(None, description="keep requests started at or after this ISO time (e.g. 2026-12-01)")
    until: str | None = Field(None, description="keep requests started before this ISO time")
    keep_truncated: bool = Field(False, description="keep answers cut off at max_tokens (finish_reason length)")
    strip_system: bool = Field(True, description="remove a system prompt that every kept request shares")
    near_dup: float = Field(0.8, gt=0, le=1, description="near-duplicate MinHash Jaccard threshold (1: exact duplicates only)")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="share of prompts held out as a test set (OUTPUT stem + .test.jsonl)")
    relabel: str | None = Field(None, description="a teacher (openai:MODEL or local:MODEL) that re-answers every kept prompt")
    teacher_url: str | None = Field(None, description="base URL of the relabelling teacher's endpoint")
    teacher_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the teacher's API key")
    max_tokens: int = Field(512, ge=1, description="the most tokens of one relabelled answer")
    concurrency: int = Field(4, ge=1, description="teacher requests in flight at once")


@dataclass
class TrafficResult:
    train: Path
    test: Path | None
    report: dict = field(default_factory=dict)


def _tag_filters(tags: list[str]) -> list[tuple[str, str | None]]:
    out = []
    for t in tags:
        key, eq, value = t.partition("=")
        if not key:
            raise UserError(f"--tag '{t}': expected KEY=VALUE or KEY")
        out.append((key, value if eq else None))
    return out


def _time(value: str | None, flag: str):
    from datetime import datetime, timezone

    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{flag} '{value}': not an ISO date or time", hint="e.g. 2026-12-01 or 2026-12-01T13:00:00+00:00") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _started(record: dict):
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(str(record.get("started_at")))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def test_path_for(output: Path) -> Path:
    return output.with_name(f"{output.stem}.test{output.suffix}")


def _held_out(prompt_messages: list[dict], fraction: float) -> bool:
    digest = hashlib.blake2b(repr([(m["role"], m["content"]) for m in prompt_messages]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64 < fraction


def harvest(log: str | Path, output: str | Path, opts: TrafficOptions) -> TrafficResult:
    log, output = Path(log), check_output(output)
    if not log.is_file():
        raise DataError(f"{log}: traffic log not found", hint="start the server with --traffic-log FILE")
    tags, since, until = _tag_filters(opts.tag), _time(opts.since, "--since"), _time(opts.until, "--until")
    teacher = None
    if opts.relabel:  # reachable before any work
        import os

        from tunesmith.synth.cache import RequestCache
        from tunesmith.synth.teacher import TeacherSettings, make_teacher

        teacher = make_teacher(opts.relabel, TeacherSettings(temperature=0.0, max_tokens=opts.max_tokens,
                                                             concurrency=opts.concurrency),
                               RequestCache(output.with_name(output.name + ".cache")), base_url=opts.teacher_url,
                               api_key=os.environ.get(opts.teacher_key_env), flag="--relabel")
        teacher.check()

    dropped: Counter = Counter()
    kept: list[tuple[dict, list[dict]]] = []   # (log record, messages)
    read = 0
    for _line, record in read_jsonl(log):
        read += 1
        if isinstance(record, ReadProblem):
            dropped[f"unreadable line ({record.message})"] += 1
            continue
        try:
            sample = FORMATS["messages"].parse(record)
        except FieldProblem as exc:
            dropped[f"not a chat ({exc.field}: {exc.message})"] += 1
            continue
        meta = record.get("metadata") or {}
        started = _started(record)
        if opts.model and record.get("model") not in opts.model:
            dropped["other model"] += 1
        elif opts.adapter and record.get("adapter") not in opts.adapter:
            dropped["other adapter"] += 1
        elif any(k not in meta or (v is not None and meta[k] != v) for k, v in tags):
            dropped["tags do not match"] += 1
        elif (since or until) and started is None:
            dropped["no start time"] += 1
        elif (since and started < since) or (until and started >= until):
            dropped["outside the time window"] += 1
        elif record.get("finish_reason") == "length" and not opts.keep_truncated:
            dropped["answer cut off at max_tokens"] += 1
        else:
            kept.append((record, sample.messages))

    # The teacher answers under the deployment's system prompt; the dataset then drops it.
    if teacher is not None and kept:
        replies = teacher.chat_many([msgs[:-1] for _, msgs in kept], stage="relabel")
        relabelled = []
        for (r, msgs), reply in zip(kept, replies):
            if reply.text is None or not reply.text.strip():
                dropped["relabel failed"] += 1
                continue
            relabelled.append((r, [*msgs[:-1], {"role": "assistant", "content": reply.text.strip()}]))
        kept = relabelled

    systems = {msgs[0]["content"] if msgs[0]["role"] == "system" else None for _, msgs in kept}
    stripped = None
    if opts.strip_system and len(systems) == 1 and None not in systems and kept:
        stripped = systems.pop()
        kept = [(r, msgs[1:]) for r, msgs in kept]

    index = NearDupIndex(NearDupParams(threshold=opts.near_dup)) if opts.near_dup < 1 else None
    seen: set[bytes] = set()
    unique = []
    samples = [FORMATS["messages"].parse({"messages": msgs}) for _, msgs in kept]
    sigs = index.signatures(samples) if index is not None and samples else None
    for i, ((record, msgs), sample) in enumerate(zip(kept, samples)):
        digest = exact_digest(sample)
        if digest in seen:
            dropped["exact duplicate"] += 1
            continue
        seen.add(digest)
        if sigs is not None and index.find_duplicates(sigs[i:i + 1])[0] is not None:
            dropped["near duplicate"] += 1
            continue
        unique.append((record, msgs))

    test_path = test_path_for(output) if opts.test_fraction > 0 else None
    counts = Counter()
    with open_writer(output) as write_train:
        rows_test = []
        for record, msgs in unique:
            row = {"id": f"{record.get('request_id', 'req')}-{(record.get('usage') or {}).get('choice', 0)}",
                   "messages": msgs,
                   "provenance": {"source": "traffic", "log": str(log), "request_id": record.get("request_id"),
                                  "model": record.get("model"), "adapter": record.get("adapter"),
                                  "started_at": record.get("started_at"), "metadata": record.get("metadata") or {},
                                  **({"relabelled_by": teacher.name} if teacher is not None else {})}}
            if test_path is not None and _held_out(msgs[:-1], opts.test_fraction):
                rows_test.append(row)
            else:
                write_train(row)
                counts["train"] += 1
        if test_path is not None:
            with open_writer(test_path) as write_test:
                for row in rows_test:
                    write_test(row)
            counts["test"] = len(rows_test)
    report = {"log": str(log), "records": read, "kept": len(unique), "train": counts["train"], "test": counts.get("test", 0),
              "dropped": dict(dropped.most_common()), "stripped_system_prompt": stripped,
              "train_file": str(output), "test_file": str(test_path) if test_path else None}
    if teacher is not None:
        from tunesmith.synth.teacher import usage_dict

        report["teacher"] = {"name": teacher.name, **usage_dict(teacher.usage.get("relabel") or _empty_usage())}
    write_json(output.with_name(output.stem + ".report.json"), report)
    return TrafficResult(output, test_path, report)


def _empty_usage():
    from tunesmith.synth.teacher import StageUsage

    return StageUsage()
