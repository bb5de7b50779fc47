"""`synthesize`: inputs -> teacher requests -> candidates -> curation -> a training JSONL + yield report.

Everything that can fail on the user's side is checked before the first teacher request: the
inputs, the held-out set, the check file, the prompt templates, and that the teacher (and the
judge) answer at all. Requests go out in batches; each batch is curated at once, so an
open-ended mode stops as soon as `n` examples have passed. The output and its report are written
at the end, atomically; the request cache is what a killed run resumes from.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.dedup import NearDupParams
from tunesmith.data.writers import check_output, open_writer
from tunesmith.errors import UserError
from tunesmith.io_utils import write_json
from tunesmith.synth.cache import RequestCache
from tunesmith.synth.checks import load_check
from tunesmith.synth.curate import (
    NO_SCORE,
    CheckStage,
    DecontaminationStage,
    DedupStage,
    FormatStage,
    JudgeStage,
    NoveltyStage,
    Pipeline,
    load_rubric,
)
from tunesmith.synth.examples import Candidate, InvalidReply
from tunesmith.synth.inputs import Input, load_documents, load_examples
from tunesmith.synth.modes import MODES, load_template
from tunesmith.synth.novelty import HeldOutIndex
from tunesmith.synth.options import SynthOptions
from tunesmith.synth.teacher import Pricing, Teacher, TeacherSettings, make_teacher, usage_dict

OPEN_ENDED_DEFAULT = 100


@dataclass
class SynthResult:
    output: Path
    report_path: Path
    kept: list[Candidate]
    report: dict = field(default_factory=dict)


def default_cache(output: Path) -> Path:
    return output.with_name(output.name + ".cache")


def report_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".report.json")


def _settings(opts: SynthOptions) -> TeacherSettings:
    return TeacherSettings(temperature=opts.temperature, max_tokens=opts.max_tokens, concurrency=opts.concurrency,
                           requests_per_minute=opts.requests_per_minute, max_retries=opts.max_retries,
                           backoff_seconds=opts.backoff_seconds,
                           pricing=Pricing(opts.price_prompt_per_1k, opts.price_completion_per_1k))


def _held_out_texts(path: str) -> list[tuple[str, str]]:
    held = load_examples(path, answers_required=False)
    return [(h.id, h.user_text + "\n" + (h.answer or "")) for h in held]


def _drop_leaking_inputs(inputs: list, index: HeldOutIndex | None, held_keys: set[str]) -> tuple[list, int]:
    """Inputs that are, or share an n-gram with, a held-out example never reach a synthesis prompt."""
    if index is None:
        return inputs, 0
    kept = []
    for item in inputs:
        text = item.user_text + "\n" + (item.answer or "") if isinstance(item, Input) else item.text
        if " ".join(text.split()).lower() in held_keys or index.overlap(text) is not None:
            continue
        kept.append(item)
    return kept, len(inputs) - len(kept)


def synthesize(mode_name: str, source: str | Path, output: str | Path, opts: SynthOptions, *,
               progress=None) -> SynthResult:
    if mode_name not in MODES:
        raise UserError(f"unknown synth mode '{mode_name}'", hint=f"use one of {', '.join(MODES)}")
    mode_cls = MODES[mode_name]
    output = check_output(output)
    if opts.answerer and not mode_cls.answerable:
        takers = ", ".join(name for name, cls in MODES.items() if cls.answerable)
        raise UserError(f"--answerer: {mode_name} asks the teacher for whole examples; only {takers} takes an answerer")
    if opts.write_as and not opts.answerer:
        raise UserError("--write-as says how the teacher writes prompts for an --answerer; without --answerer the "
                        "teacher writes whole examples by chat", hint="add --answerer MODEL, or drop --write-as")
    template = load_template(mode_cls, opts.prompt, opts)
    check = load_check(opts.check) if opts.check else None
    rubric = load_rubric(opts.judge_prompt) if opts.min_score > 0 else None
    report: dict = {"mode": mode_name, "input": str(source), "output": str(output), "teacher": opts.teacher}

    # Inputs and the held-out set.
    if mode_cls.documents:
        docs = load_documents(source, opts.chunk_words, overlap=max(0, opts.chunk_words // 8))
        inputs: list = docs.passages
        report["documents"] = {"files": docs.files, "passages": len(docs.passages), "skipped": docs.skipped}
    else:
        inputs = load_examples(source, answers_required=mode_cls.novelty)
    index, held_keys = None, set()
    if opts.test:
        held = _held_out_texts(opts.test)
        held_keys = {" ".join(t.split()).lower() for _, t in held}
        boilerplate = [i.user_text for i in inputs] if not mode_cls.documents else []
        index = HeldOutIndex(held, opts.decontam_ngram, boilerplate)
    inputs, leaking = _drop_leaking_inputs(inputs, index, held_keys)
    report["inputs"] = {"read": len(inputs) + leaking, "removed_overlapping_held_out": leaking, "used": len(inputs)}
    if not inputs:
        raise UserError(f"{source}: every input overlaps the held-out set {opts.test}",
                        hint="the held-out set must be separate from the seeds")

    # Teachers: reachable before any work.
    cache = RequestCache(opts.cache or default_cache(output))
    api_key = os.environ.get(opts.teacher_key_env)
    teacher = make_teacher(opts.teacher, _settings(opts), cache, base_url=opts.teacher_url, api_key=api_key)
    teacher.check()
    judge: Teacher | None = None
    if rubric is not None:
        same = opts.judge is None or (opts.judge == opts.teacher and (opts.judge_url or opts.teacher_url) == opts.teacher_url)
        judge = teacher if same else make_teacher(opts.judge, _settings(opts), cache,
                                                  base_url=opts.judge_url or opts.teacher_url, api_key=api_key,
                                                  flag="--judge", role="judge", url_flag="--judge-url")
        if judge is not teacher:
            judge.check()
    answerer: Teacher | None = None
    if opts.answerer:
        answerer = make_teacher(opts.answerer, _settings(opts), cache, base_url=opts.answerer_url or opts.teacher_url,
                                api_key=api_key, flag="--answerer", role="answerer", url_flag="--answerer-url")
        answerer.check()

    mode = mode_cls(inputs, template, opts)
    stages = [FormatStage(), DedupStage(NearDupParams(threshold=opts.near_dup) if opts.near_dup < 1 else None)]
    if mode_cls.novelty:
        stages.append(NoveltyStage(mode.novelty_texts(), opts.novelty))
    if index is not None:
        stages.append(DecontaminationStage(index))
    if check is not None:
        stages.append(CheckStage(check))
    if judge is not None:
        stages.append(JudgeStage(judge, opts.min_score, rubric))
    pipeline = Pipeline(stages)

    # Open-ended modes ask until `n` pass (100 unless given); the others answer every input, or stop at `n`.
    target = opts.n or (OPEN_ENDED_DEFAULT if mode_cls.open_ended else None)
    limit = opts.max_requests or (4 * target if mode_cls.open_ended else None)
    batch_size = max(opts.concurrency * 2, 8)
    generate = {"in": 0, "out": 0, "dropped": Counter()}
    answered = {"in": 0, "out": 0, "dropped": Counter()}
    kept: list[Candidate] = []
    started = time.monotonic()
    i = 0
    while (target is None or len(kept) < target) and (limit is None or i < limit):
        requests = []
        while len(requests) < batch_size and (limit is None or i < limit):
            r = mode.request(i)
            if r is None:
                break
            requests.append(r)
            i += 1
        if not requests:
            break
        replies = teacher.chat_many([r.messages for r in requests], stage="synthesize",
                                    variants=[r.variant for r in requests], stop=requests[0].stop)
        if all(r.text is None for r in replies):
            # A teacher that stopped answering: stop rather than write a thin output; what was
            # answered so far is cached, so the same command resumes.
            raise UserError(f"teacher {teacher.name} answered none of {len(replies)} requests: {replies[0].error}",
                            hint="check the teacher, then rerun the same command: answered requests are cached")
        candidates = []
        for r, reply in zip(requests, replies):
            generate["in"] += 1
            if reply.text is None:
                generate["dropped"]["request failed"] += 1
                continue
            try:
                made = mode.candidates(r, reply.text)
            except InvalidReply as exc:
                generate["dropped"][f"invalid reply: {exc}"] += 1
                continue
            for c in made:
                c.provenance["teacher"] = teacher.name
            candidates += made
            generate["out"] += len(made)
        if answerer is not None:
            candidates = answer(answerer, candidates, opts.answer_temperature, opts.answer_max_tokens, answered)
        kept += pipeline.run(candidates)
        if progress is not None:
            progress(requests=i, kept=len(kept) if target is None else min(len(kept), target))
    kept = kept[:target]

    with open_writer(output) as write:
        for c in kept:
            write(c.record())
    usage = {name: usage_dict(u) for name, u in teacher.usage.items()}
    if judge is not None and judge is not teacher:
        usage |= {name: usage_dict(u) for name, u in judge.usage.items()}
    if answerer is not None:
        usage |= {name: usage_dict(u) for name, u in answerer.usage.items()}
    stage_rows = [{"stage": "synthesize", "in": generate["in"], "out": generate["out"],
                   "dropped": dict(generate["dropped"].most_common()), "teacher": usage.get("synthesize")}]
    if answerer is not None:
        stage_rows.append({"stage": "answer", "in": answered["in"], "out": answered["out"],
                           "dropped": dict(answered["dropped"].most_common()), "teacher": usage.get("answer")})
    for stage in stages:
        stage_rows.append({"stage": stage.name, **stage.count.as_dict(), "teacher": usage.get(stage.name)})
    total = {k: sum(u[k] for u in usage.values()) for k in ("requests", "cached", "failed", "retries",
                                                              "prompt_tokens", "completion_tokens")}
    total["cost"] = round(sum(u["cost"] for u in usage.values()), 6)
    report |= {"requests": i, "kept": len(kept), "target": target, "stages": stage_rows, "teacher_usage": total,
               "judge": judge.name if judge is not None else None,
               "answerer": answerer.name if answerer is not None else None, "seconds": round(time.monotonic() - started, 2),
               "warnings": judge_warnings(stages, judge)}
    rpath = report_path_for(output)
    write_json(rpath, report)
    return SynthResult(output, rpath, kept, report)


def answer(answerer: Teacher, candidates: list[Candidate], temperature: float, max_tokens: int,
           count: dict) -> list[Candidate]:
    """Self-Instruct's second step: the answerer answers each written prompt; a failed or empty answer drops it."""
    replies = answerer.chat_many([c.messages for c in candidates], stage="answer", temperature=temperature,
                                 max_tokens=max_tokens)
    out = []
    for c, reply in zip(candidates, replies):
        count["in"] += 1
        if reply.text is None or not reply.text.strip():
            count["dropped"]["request failed" if reply.text is None else "empty answer"] += 1
            continue
        c.messages.append({"role": "assistant", "content": reply.text.strip()})
        c.provenance["answerer"] = answerer.name
        out.append(c)
        count["out"] += 1
    return out


def judge_warnings(stages, judge) -> list[str]:
    """A judge that cannot follow the rubric drops good and bad alike (a 135M local model gave no score for
    12 of 13 candidates): say so, with the fix, instead of leaving a thin output unexplained."""
    stage = next((st for st in stages if isinstance(st, JudgeStage)), None)
    if stage is None or stage.count.seen < 8:
        return []
    unscored = stage.count.dropped.get(NO_SCORE, 0)
    if unscored * 2 <= stage.count.seen:
        return []
    return [f"the judge {judge.name} gave no 1-10 score for {unscored} of {stage.count.seen} candidates: it does "
            "not follow the rubric; use a stronger --judge, or --min-score 0 to keep candidates unjudged"]
