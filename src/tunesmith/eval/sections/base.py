"""What a section of the evaluation is, the context it runs in, and the registry of sections.

A section is one check of the report (generation metrics, perplexity, pass@k, the judge ...). The
runner knows none of them by name: it asks every registered section to validate the config before
any model is loaded, to prepare its inputs, and then to run, in the registry's order. Two phases:

- "columns" sections score every system per example and add *columns* to the systems table
  (each a fold over per-example rows, so each gets an interval and a paired comparison);
- "report" sections run after the table exists (the judge needs its best baseline) and add their
  own entries to report.json.

Both may add rows to predictions.jsonl and lines to report.md (`notes` under the table, `markdown`
as a block of their own). Sections are classes; the runner makes a fresh instance per evaluation,
so per-run state (the loaded tasks, the judge) lives on `self` and two evaluations never share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.eval.systems import SystemSpec, conversations
from tunesmith.eval.table import Column
from tunesmith.events import EvalProgress, Events


@dataclass
class SectionResult:
    columns: list[Column] = field(default_factory=list)          # added to the systems table, in this order
    rows: dict[str, dict[str, list]] = field(default_factory=dict)  # system -> column -> one row per example
    report: dict = field(default_factory=dict)                    # entries of report.json
    predictions: list[dict] = field(default_factory=list)         # rows of predictions.jsonl


@dataclass
class EvalContext:
    """Everything a section may read; the runner fills the shared results as sections finish."""
    systems: list[SystemSpec]
    tokenizer: object
    cfg: EvalConfig
    chat: list[Sample]                  # conversations (generation metrics, response perplexity, judge)
    texts: list[Sample]                 # raw text (perplexity)
    # Preference pairs (preference accuracy). They are in `chat` too: their prompts are answered and
    # judged like any other, with the chosen answer as the reference.
    pairs: list[Sample] = field(default_factory=list)
    train_pool: list[Sample] = field(default_factory=list)
    system_prompt: str | None = None
    precision: str = "fp32"
    events: Events | None = None
    lm_eval_args: dict | None = None    # from the CLI: model paths lm-eval can load itself
    out_dir: Path | None = None
    code_max_new_tokens: int | None = None   # generation budget of pass@k programs (None: cfg.max_new_tokens)
    loop_guard: object | None = None         # generation/loops.LoopGuard, when eval.stop_loops
    draft_model: object | None = None        # the loaded eval.draft_model
    eft_large: object | None = None          # the loaded eval.eft_large
    # Shared results, written by the runner and by the generation section.
    rows: dict[str, dict[str, list]] = field(default_factory=dict)
    columns: dict[str, Column] = field(default_factory=dict)
    predictions: dict[str, list[str]] = field(default_factory=dict)   # system -> reply per chat example
    chat_rows: dict[str, list[dict]] = field(default_factory=dict)    # system -> predictions.jsonl row per chat example
    report: dict = field(default_factory=dict)                         # the table part, before "report" sections run
    _prompts: dict[str, list[list[dict]]] = field(default_factory=dict)

    def conversations(self, spec: SystemSpec) -> list[list[dict]]:
        """The prompts `spec` answers for the chat examples, built once per evaluation (retrieval
        indexes them) and shared by every section that reads them."""
        if spec.name not in self._prompts:
            self._prompts[spec.name] = conversations(spec, self.chat, self.train_pool, self.cfg)
        return self._prompts[spec.name]

    @property
    def references(self) -> list[str]:
        return [s.reference() for s in self.chat]

    def progress(self, system: str, stage: str, total: int) -> Callable[[int], None]:
        """An `advance(k)` callback that reports `k` more of `total` units as EvalProgress events.

        Emits 0 of `total` at once, so a listener shows the stage before its first unit is done.
        Thread-safe: the sandbox reports from its worker threads.
        """
        if self.events is None:
            return lambda k=1: None
        events, done, lock = self.events, [0], threading.Lock()
        events.emit(EvalProgress(system, stage, 0, total))

        def advance(k: int = 1) -> None:
            with lock:
                done[0] += k
                events.emit(EvalProgress(system, stage, done[0], total))
        return advance


class EvalSection:
    """Base class of a section: override what the section needs.

    Subclasses set `name` (the registry key) and `order` (sections run and render in ascending
    order; the built-in ones use multiples of 10), and `phase` ("columns" or "report").
    """
    name: ClassVar[str]
    order: ClassVar[int] = 100
    phase: ClassVar[str] = "columns"

    def enabled(self, cfg: EvalConfig) -> bool:
        """Whether this evaluation runs the section at all (a config key, usually)."""
        return True

    def validate(self, cfg: EvalConfig) -> None:
        """Raise ConfigError for a setting that cannot work: runs for every section, enabled or not,
        before anything is loaded, so a mistake fails in a second instead of after generation."""

    def prepare(self, ctx: EvalContext) -> int:
        """Load inputs of the section's own (task files, a judge) before any system is scored.

        Returns how many examples of its own it brings: an evaluation with no chat or text
        examples still runs when some section brings its own.
        """
        return 0

    def run(self, ctx: EvalContext) -> SectionResult:
        raise NotImplementedError

    def notes(self, report: dict) -> list[str]:
        """report.md lines under the systems table: the settings behind this section's columns."""
        return []

    def markdown(self, report: dict) -> list[str]:
        """report.md block of the section's own, after the table and the metric details."""
        return []


_REGISTRY: dict[str, type[EvalSection]] = {}


def register(cls: type[EvalSection]) -> type[EvalSection]:
    """Register a section class under `cls.name` (usable as a class decorator)."""
    if cls.phase not in ("columns", "report"):
        raise ValueError(f"eval section {cls.name!r}: phase must be 'columns' or 'report', not {cls.phase!r}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"eval section {cls.name!r} is already registered by {existing.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered() -> list[type[EvalSection]]:
    """The section classes in run order."""
    return sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name))
