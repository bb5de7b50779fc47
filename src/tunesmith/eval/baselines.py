"""The prompting baselines: how a base-model system builds each example's prompt.

A baseline is a class registered under the name `eval.baselines` and `tunesmith eval --baselines`
use; its `system` is the row it gets in the report (every base system's name starts with "base_",
which is how the report finds the best prompting system to compare the fine-tune with). Adding a
baseline is one subclass and `@register_baseline`: nothing else lists them.

- zero-shot: the example's own prompt;
- few-shot: k training examples drawn at random (seeded per example) as demonstrations;
- retrieval-few-shot: the k training examples whose prompts are most similar (BM25) as demonstrations;
- rag: the passages of the user's documents (eval.docs) most similar to the prompt (BM25), put
  before the question in its last user turn.

An instance lives for one evaluation, so an index built for one pool of examples is never reused
for another.
"""

from __future__ import annotations

import random
from typing import ClassVar

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.errors import ConfigError


def query_text(sample: Sample) -> str:
    """What retrieval matches on: the text of the prompt's user turns."""
    return "\n".join(m["content"] for m in sample.prompt_messages() if m["role"] == "user")


def with_demonstrations(sample: Sample, shots: list[Sample]) -> list[dict]:
    """The example's prompt with the shots' turns before it (the example's system message first)."""
    prompt = sample.prompt_messages()
    system = [m for m in prompt if m["role"] == "system"]
    turns = [m for shot in shots for m in shot.messages if m["role"] != "system"]
    return system + turns + [m for m in prompt if m["role"] != "system"]


def few_shot_messages(sample: Sample, pool: list[Sample], k: int, rng: random.Random) -> list[dict]:
    candidates = [s for s in pool if s.kind == "chat" and s is not sample]
    return with_demonstrations(sample, rng.sample(candidates, min(k, len(candidates))))


class Baseline:
    name: ClassVar[str]
    system: ClassVar[str]
    describe: ClassVar[str]   # one line for docs and report notes

    def validate(self, cfg: EvalConfig) -> None:
        """Raise a UserError for a setting or input that cannot work, before any model is loaded."""

    def needs_pool(self) -> bool:
        """Whether the baseline draws on the training examples (`--train-data` in `tunesmith eval`)."""
        return False

    def conversations(self, chat: list[Sample], pool: list[Sample], cfg: EvalConfig) -> list[list[dict]]:
        raise NotImplementedError


_BASELINES: dict[str, type[Baseline]] = {}


def register_baseline(cls: type[Baseline]) -> type[Baseline]:
    if not cls.system.startswith("base_"):
        raise ValueError(f"baseline {cls.name!r}: its system name must start with 'base_', not {cls.system!r}")
    _BASELINES[cls.name] = cls
    return cls


def baseline_names() -> list[str]:
    return list(_BASELINES)


def get_baseline(name: str) -> Baseline:
    cls = _BASELINES.get(name)
    if cls is None:
        raise ConfigError(f"eval.baselines: unknown baseline '{name}'", hint=f"use any of {', '.join(_BASELINES)}")
    return cls()


@register_baseline
class ZeroShot(Baseline):
    name, system = "zero-shot", "base_zero_shot"
    describe = "the base model on each example's own prompt"

    def conversations(self, chat, pool, cfg):
        return [s.prompt_messages() for s in chat]


@register_baseline
class FewShot(Baseline):
    name, system = "few-shot", "base_few_shot"
    describe = "the base model with eval.few_shot_k training examples drawn at random as demonstrations"

    def needs_pool(self) -> bool:
        return True

    def conversations(self, chat, pool, cfg):
        # Seeded per example, so adding or dropping one example leaves every other prompt as it was.
        return [few_shot_messages(s, pool, cfg.few_shot_k, random.Random(cfg.seed * 100003 + i))
                for i, s in enumerate(chat)]


@register_baseline
class RetrievalFewShot(Baseline):
    name, system = "retrieval-few-shot", "base_retrieval_few_shot"
    describe = ("the base model with the eval.few_shot_k training examples whose prompts are most similar (BM25) "
                "as demonstrations, most similar nearest the question")

    def needs_pool(self) -> bool:
        return True

    def validate(self, cfg: EvalConfig) -> None:
        from tunesmith.eval.retrieval import _bm25s

        _bm25s()

    def conversations(self, chat, pool, cfg):
        from tunesmith.eval.retrieval import BM25Index

        candidates = [s for s in pool if s.kind == "chat"]
        index = BM25Index([query_text(s) for s in candidates])
        out = []
        for sample in chat:
            same = {i for i, s in enumerate(candidates) if s is sample}   # an example never demonstrates itself
            best = index.top(query_text(sample), cfg.few_shot_k, exclude=same)
            # Best last: the most similar demonstration sits right before the question.
            out.append(with_demonstrations(sample, [candidates[i] for i in reversed(best)]))
        return out


RAG_INSTRUCTION = "Use these passages from the documents if they help:"


def rag_messages(sample: Sample, passages: list) -> list[dict]:
    """The prompt with the passages before the question, in its last user turn."""
    prompt = [dict(m) for m in sample.prompt_messages()]
    block = "\n\n".join(f"[{i + 1}] ({p.source})\n{p.text}" for i, p in enumerate(passages))
    last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    prompt[last]["content"] = f"{RAG_INSTRUCTION}\n\n{block}\n\nQuestion:\n{prompt[last]['content']}"
    return prompt


@register_baseline
class Rag(Baseline):
    name, system = "rag", "base_rag"
    describe = ("the base model with the eval.rag_k passages of eval.docs most similar (BM25) to the prompt "
                "put before the question")

    def validate(self, cfg: EvalConfig) -> None:
        from tunesmith.eval.documents import load_passages
        from tunesmith.eval.retrieval import _bm25s

        if not cfg.docs:
            raise ConfigError("the rag baseline needs eval.docs (a folder of .txt, .md or .pdf documents)",
                              hint="pass --docs DIR, or leave rag out of the baselines")
        if cfg.chunk_overlap >= cfg.chunk_words:
            raise ConfigError(f"eval.chunk_overlap ({cfg.chunk_overlap}) must be smaller than eval.chunk_words "
                              f"({cfg.chunk_words})", hint="e.g. chunk_words: 120, chunk_overlap: 30")
        _bm25s()
        load_passages(cfg.docs, cfg.chunk_words, cfg.chunk_overlap)   # unreadable or unparseable files fail now

    def conversations(self, chat, pool, cfg):
        from tunesmith.eval.documents import load_passages
        from tunesmith.eval.retrieval import BM25Index

        passages = load_passages(cfg.docs, cfg.chunk_words, cfg.chunk_overlap)
        index = BM25Index([p.text for p in passages])
        return [rag_messages(s, [passages[i] for i in index.top(query_text(s), cfg.rag_k)]) for s in chat]
