"""Curation: candidates pass a chain of stages, cheapest first, each counting what it drops and why.

format (the checks `data validate` makes) -> exact and near duplicates (data/dedup.py's MinHash)
-> novelty (ROUGE-L against the inputs and the accepted) -> decontamination (n-grams of the
held-out set) -> programmatic check -> LLM judge (a 1-10 rubric score, the only stage that costs
teacher tokens, so it sees the fewest candidates). Stages keep state across batches (what was
seen, what was accepted), so a run that synthesizes in rounds curates as if all came at once.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.dedup import NearDupIndex, NearDupParams, exact_digest
from tunesmith.data.formats import FORMATS, FieldProblem
from tunesmith.synth.checks import Check
from tunesmith.synth.examples import Candidate
from tunesmith.synth.novelty import HeldOutIndex, NoveltyPool, shared_prefix

JUDGE_PROMPT = Path(__file__).resolve().parents[1] / "assets" / "synth" / "judge_rubric.md"
# The rubric asks for one "Score: N" line; room for a short justification before it, not an essay.
JUDGE_MAX_TOKENS = 64


@dataclass
class StageCount:
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"in": self.seen, "out": self.kept, "dropped": dict(self.dropped.most_common())}


class Stage:
    name = ""

    def __init__(self):
        self.count = StageCount()

    def why_drop(self, c: Candidate) -> str | None:
        raise NotImplementedError

    def run(self, candidates: list[Candidate]) -> list[Candidate]:
        kept = []
        for c in candidates:
            self.count.seen += 1
            reason = self.why_drop(c)
            if reason is None:
                kept.append(c)
                self.count.kept += 1
            else:
                self.count.dropped[reason] += 1
        return kept

    def accepted(self, kept: list[Candidate]) -> None:
        """Called with the candidates that passed every stage of a batch."""


class FormatStage(Stage):
    name = "format"

    def why_drop(self, c: Candidate) -> str | None:
        try:
            FORMATS["messages"].parse({"messages": c.messages})
        except FieldProblem as exc:
            return f"{exc.field}: {exc.message}"
        return None


class DedupStage(Stage):
    name = "dedup"

    def __init__(self, near: NearDupParams | None):
        super().__init__()
        self.exact: set[bytes] = set()
        self.near = NearDupIndex(near) if near is not None else None

    def run(self, candidates: list[Candidate]) -> list[Candidate]:
        samples = [FORMATS["messages"].parse({"messages": c.messages}) for c in candidates]
        sigs = self.near.signatures(samples) if self.near is not None and samples else None
        kept = []
        for i, (c, s) in enumerate(zip(candidates, samples)):
            self.count.seen += 1
            digest = exact_digest(s)
            if digest in self.exact:
                self.count.dropped["exact duplicate"] += 1
                continue
            self.exact.add(digest)
            if sigs is not None and self.near.find_duplicates(sigs[i:i + 1])[0] is not None:
                self.count.dropped["near duplicate"] += 1
                continue
            kept.append(c)
            self.count.kept += 1
        return kept


class NoveltyStage(Stage):
    """Self-Instruct's filter: a prompt whose ROUGE-L with an input or an accepted prompt reaches the
    threshold is not new. Earlier candidates of the same batch count too, then only the accepted stay.

    An instruction every input opens with ("Extract the order as JSON ...\nOrder: ...") is the task
    itself; novelty is measured on what follows it, or every example of a fixed-instruction task
    would look like a copy."""

    name = "novelty"

    def __init__(self, inputs: list[str], threshold: float):
        super().__init__()
        self.prefix = shared_prefix(inputs)
        self.pool = NoveltyPool([self._varying(t) for t in inputs])
        self.threshold = threshold

    def _varying(self, text: str) -> str:
        return text[len(self.prefix):] if self.prefix and text.startswith(self.prefix) else text

    def run(self, candidates: list[Candidate]) -> list[Candidate]:
        base = len(self.pool.tokens)
        kept = []
        for c in candidates:
            self.count.seen += 1
            score = self.pool.closest(self._varying(c.prompt))
            c.provenance.setdefault("scores", {})["rouge_l_max"] = round(score, 4)
            if score >= self.threshold:
                self.count.dropped[f"ROUGE-L >= {self.threshold} with an input or accepted prompt"] += 1
                continue
            self.pool.add(self._varying(c.prompt))
            kept.append(c)
            self.count.kept += 1
        del self.pool.tokens[base:]   # the batch's own entries: only accepted ones come back in `accepted`
        return kept

    def accepted(self, kept: list[Candidate]) -> None:
        for c in kept:
            self.pool.add(self._varying(c.prompt))


class DecontaminationStage(Stage):
    name = "decontaminate"

    def __init__(self, index: HeldOutIndex):
        super().__init__()
        self.index = index

    def why_drop(self, c: Candidate) -> str | None:
        hit = self.index.overlap(c.prompt + "\n" + c.answer)
        return None if hit is None else f"shares a {self.index.n}-gram with the held-out set"


class CheckStage(Stage):
    name = "check"

    def __init__(self, check: Check):
        super().__init__()
        self.check = check

    def why_drop(self, c: Candidate) -> str | None:
        return self.check(c.record())


_SCORE = re.compile(r"score\W{0,3}(\d{1,2}(?:\.\d+)?)", re.I)
_NUMBER = re.compile(r"(?<![\d.])(\d{1,2}(?:\.\d+)?)(?![\d.])")


def parse_score(reply: str | None) -> float | None:
    """The judge's 1-10 score: the last "Score: N", else a reply that is just a number; None if neither."""
    if not reply:
        return None
    marks = _SCORE.findall(reply)
    if not marks:
        bare = reply.strip().strip("*.` ")
        marks = _NUMBER.findall(bare) if _NUMBER.fullmatch(bare) else []
    if not marks:
        return None
    value = float(marks[-1])
    return value if 1 <= value <= 10 else None


def load_rubric(path: str | Path | None = None) -> str:
    from tunesmith.errors import UserError

    path = Path(path) if path else JUDGE_PROMPT
    if not path.is_file():
        raise UserError(f"--judge-prompt {path}: file not found", hint=f"copy {JUDGE_PROMPT} and edit it")
    text = path.read_text(encoding="utf-8-sig")
    try:
        text.format(question="", answer="")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--judge-prompt {path}: bad placeholder {exc}",
                        hint="only {question} and {answer} are filled; write literal braces as {{ }}") from None
    if "{answer}" not in text:
        raise UserError(f"--judge-prompt {path}: no {{answer}} placeholder", hint="the rubric must show the judge the answer")
    return text


NO_SCORE = "judge reply had no 1-10 score"     # a drop reason; run.judge_warnings reads its count


class JudgeStage(Stage):
    """A 1-10 rubric score from the judge (any teacher, asked at temperature 0); below the threshold,
    or no score in the reply, drops the candidate."""

    name = "judge"

    def __init__(self, judge, threshold: float, rubric: str):
        super().__init__()
        self.judge, self.threshold, self.rubric = judge, threshold, rubric

    def run(self, candidates: list[Candidate]) -> list[Candidate]:
        prompts = [[{"role": "user", "content": self.rubric.format(question=c.prompt, answer=c.answer)}] for c in candidates]
        replies = self.judge.chat_many(prompts, stage="judge", temperature=0.0, max_tokens=JUDGE_MAX_TOKENS) if prompts else []
        kept = []
        for c, reply in zip(candidates, replies):
            self.count.seen += 1
            if reply.text is None:
                self.count.dropped["judge request failed"] += 1
                continue
            score = parse_score(reply.text)
            if score is None:
                self.count.dropped[NO_SCORE] += 1
                continue
            c.provenance.setdefault("scores", {})["judge"] = score
            if score < self.threshold:
                self.count.dropped[f"judge score < {self.threshold:g}"] += 1
                continue
            kept.append(c)
            self.count.kept += 1
        return kept


class Pipeline:
    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def run(self, candidates: list[Candidate]) -> list[Candidate]:
        for stage in self.stages:
            candidates = stage.run(candidates)
        for stage in self.stages:
            stage.accepted(candidates)
        return candidates
