"""LLM-as-judge pairwise win rate of one system against another.

Every pair is judged twice, once in each order, because judges favour a position (often the first
answer). A verdict counts only when both orders name the same winner; if they disagree, or either
says tie, the pair is a tie. The win rate counts ties as half a win, with a 95 % interval over the
per-pair scores (1, 0.5, 0).

A judge is anything with `verdict(prompt) -> "A" | "B" | "tie"`. Two are built in, in a registry:
a local causal LM (the next-token logits of "A" and "B" after the prompt, so it is deterministic
and needs no sampling) and any OpenAI-compatible chat endpoint through the `openai` client. The
prompt is a text file with {question}, {reference}, {answer_a} and {answer_b} fields; the default
ships as tunesmith/assets/judge_pairwise.md and a user's own file replaces it.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tunesmith.errors import ConfigError, UserError
from tunesmith.eval import stats

DEFAULT_PROMPT = Path(__file__).resolve().parents[1] / "assets" / "judge_pairwise.md"
FIELDS = ("question", "reference", "answer_a", "answer_b")


class Judge(Protocol):
    name: str

    def verdict(self, prompt: str) -> str: ...


def load_prompt(path: str | Path | None = None) -> str:
    path = Path(path) if path else DEFAULT_PROMPT
    if not path.is_file():
        raise ConfigError(f"judge prompt file not found: {path}", hint=f"copy {DEFAULT_PROMPT} and edit it")
    text = path.read_text(encoding="utf-8-sig")
    missing = [f for f in ("answer_a", "answer_b") if "{" + f + "}" not in text]
    if missing:
        raise ConfigError(f"judge prompt {path}: missing placeholder(s) {', '.join('{' + m + '}' for m in missing)}",
                          hint=f"the prompt may use {', '.join('{' + f + '}' for f in FIELDS)}; write literal braces as {{{{ }}}}")
    try:
        text.format(**{f: "" for f in FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"judge prompt {path}: bad placeholder {exc}",
                          hint=f"only {', '.join('{' + f + '}' for f in FIELDS)} are filled; write literal braces as {{{{ }}}}") from None
    return text


# "Verdict: B", "**Final answer:** tie", "Winner - A": a labelled line; the last one is the decision.
_LABELLED = re.compile(r"^[\s*#>_`-]*(?:final\s+)?(?:verdict|winner|decision|answer|choice|better answer|result)"
                       r"[\s*_`]*[:=-]\s*(?P<value>.*)$", re.I | re.M)
_BRACKETED = re.compile(r"\[\[\s*([ABC])\s*\]\]")   # MT-Bench style: [[A]], [[B]], [[C]] for a tie
_TIE = re.compile(r"\b(?:tie|tied|draw|equal|equally|neither|both)\b", re.I)
# Upper-case only, so the article in "it is a tie" is no verdict.
_LETTER = re.compile(r"(?<![A-Za-z0-9])([AB])(?![A-Za-z0-9])")


def _decide(text: str, *, lone_lowercase: bool) -> str | None:
    """A, B or tie when `text` names exactly one of them; None when it names none or is ambiguous."""
    bare = text.strip().strip("*_`'\".!()[] ").lower()
    if lone_lowercase and bare in ("a", "b"):
        return bare.upper()
    letters = set(_LETTER.findall(text))
    tie = _TIE.search(text) is not None
    if tie and not letters:
        return "tie"
    if len(letters) == 1 and not tie:
        return letters.pop()
    return None


def parse_verdict(reply: str) -> str:
    """The judge's choice: A, B or tie. Anything unclear is a tie.

    In order: the last MT-Bench style [[A]] / [[B]] / [[C]] marker; else the last labelled line
    ("Verdict: B", "Final answer: tie"); else the whole reply. A letter counts only upper-case
    and standalone (a lone lower-case "b." reply or "verdict: b" value also counts), and a reply
    that names both answers, or an answer and a tie, is ambiguous and counts as a tie.
    """
    reply = reply or ""
    marks = _BRACKETED.findall(reply)
    if marks:
        return {"A": "A", "B": "B", "C": "tie"}[marks[-1]]
    labelled = [m.group("value") for m in _LABELLED.finditer(reply)]
    if labelled:
        return _decide(labelled[-1], lone_lowercase=True) or "tie"
    return _decide(reply, lone_lowercase=True) or "tie"


class LocalJudge:
    """A local causal LM; its verdict is whichever of the tokens "A" and "B" is likelier next."""

    def __init__(self, model, tokenizer, name: str = "local"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.ids = {v: tokenizer.encode(v, add_special_tokens=False)[0] for v in ("A", "B")}

    def verdict(self, prompt: str) -> str:
        from tunesmith.data.tokenize import prompt_ids
        from tunesmith.generation import next_token_logits

        ids = prompt_ids(self.tokenizer, [{"role": "user", "content": prompt}])
        logits = next_token_logits(self.model, [ids])[0]
        a, b = logits[self.ids["A"]].item(), logits[self.ids["B"]].item()
        return "A" if a > b else "B" if b > a else "tie"


class OpenAIJudge:
    """Any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, tunesmith serve ...)."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, max_tokens: int = 8):
        from openai import OpenAI

        self.name = f"openai:{model}@{base_url or 'api.openai.com'}"
        self.model, self.max_tokens = model, max_tokens
        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused",
                             max_retries=1, timeout=120)

    def verdict(self, prompt: str) -> str:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.0,
                max_tokens=self.max_tokens)
        except openai.OpenAIError as exc:
            raise UserError(f"judge endpoint {self.name} failed: {exc}",
                            hint="check eval.judge (openai:MODEL) and eval.judge_url, and that the server is running") from None
        return parse_verdict(reply.choices[0].message.content or "")


def _local_judge(spec: str, **_):
    from tunesmith.models import load_model, load_tokenizer, resolve_base

    resolved = resolve_base(spec)
    return LocalJudge(load_model(resolved), load_tokenizer(resolved), name=f"local:{spec}")


def _openai_judge(spec: str, base_url: str | None = None, **_):
    return OpenAIJudge(spec, base_url=base_url)


JUDGES: dict[str, Callable[..., Judge]] = {"local": _local_judge, "openai": _openai_judge}
# Judge kind -> (module it needs, how to install it).
REQUIRES = {"openai": ("openai", "pip install openai")}


def check_judge(spec: str) -> tuple[str, str]:
    """(kind, model) of a judge spec; a bad spec or a missing client library is a ConfigError now,
    not after every system has generated."""
    kind, _, rest = spec.partition(":")
    if kind not in JUDGES or not rest:
        raise ConfigError(f"eval.judge: '{spec}' is not KIND:MODEL", hint=f"KIND is one of {', '.join(JUDGES)}, "
                          "e.g. local:default or openai:gpt-4o-mini")
    if kind in REQUIRES:
        module, install = REQUIRES[kind]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"eval.judge: the {kind} judge needs the {module} package, which is not installed",
                              hint=f"{install}, or use --judge local:MODEL") from None
    return kind, rest


def make_judge(spec: str, base_url: str | None = None) -> Judge:
    """`local:MODEL` (a model as model.base takes it) or `openai:MODEL` (with base_url for a local server)."""
    kind, rest = check_judge(spec)
    return JUDGES[kind](rest, base_url=base_url)


@dataclass
class PairVerdict:
    first: str      # verdict with the candidate as answer A
    second: str     # verdict with the candidate as answer B
    outcome: str    # win | loss | tie (for the candidate)

    @property
    def score(self) -> float:
        return {"win": 1.0, "tie": 0.5, "loss": 0.0}[self.outcome]


def combine(first: str, second: str) -> str:
    """Outcome for the candidate from the two orders: it must win in both, or lose in both."""
    winner_first = {"A": "win", "B": "loss"}.get(first)
    winner_second = {"B": "win", "A": "loss"}.get(second)
    if winner_first is not None and winner_first == winner_second:
        return winner_first
    return "tie"


def pairwise(judge: Judge, questions: list[str], candidate: list[str], baseline: list[str],
             references: list[str] | None = None, prompt: str | None = None,
             progress=None) -> list[PairVerdict]:
    template = prompt if prompt is not None else load_prompt()
    references = references or [""] * len(questions)
    out = []
    for q, c, b, r in zip(questions, candidate, baseline, references):
        first = judge.verdict(template.format(question=q, reference=r, answer_a=c, answer_b=b))
        second = judge.verdict(template.format(question=q, reference=r, answer_a=b, answer_b=c))
        out.append(PairVerdict(first, second, combine(first, second)))
        if progress is not None:
            progress(1)
    return out


def summarize(verdicts: list[PairVerdict], seed: int = 0) -> dict:
    scores = [v.score for v in verdicts]
    outcomes = [v.outcome for v in verdicts]
    inconsistent = sum(1 for v in verdicts if v.outcome == "tie" and "tie" not in (v.first, v.second))
    return {"win_rate": stats.mean(scores), "win_rate_ci95": list(stats.interval(scores, seed=seed)),
            "wins": outcomes.count("win"), "ties": outcomes.count("tie"), "losses": outcomes.count("loss"),
            "inconsistent": inconsistent, "n": len(verdicts)}
