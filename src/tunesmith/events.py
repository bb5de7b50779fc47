"""Run events: what training and evaluation report, as typed records sent to listeners.

The trainer, the evaluator and the run pipeline never print and never own a progress bar. They
emit events; the CLI's console display is one listener, the metrics.jsonl writer another, and a job
service or a web page can subscribe a third. Every event turns into a flat JSON-able dict
(`to_dict`), so a listener can store or stream it without knowing the classes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    at: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Message(Event):
    """A line for a person: what was loaded, what was decided, a warning."""
    kind: ClassVar[str] = "message"
    text: str
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True)
class TrainStarted(Event):
    """`start_step` > 0: a resumed run, continuing after that step's checkpoint."""
    kind: ClassVar[str] = "train_started"
    total_steps: int
    start_step: int = 0


@dataclass(frozen=True)
class StepMetrics(Event):
    """One optimizer step's metrics (step, epoch, loss, lr, grad_norm, tokens_per_s, val_loss when
    validated: a metrics.jsonl row). Sent after every step; `logged` marks the rows metrics.jsonl
    keeps (every train.log_every steps, validated steps and the last one)."""
    kind: ClassVar[str] = "step"
    step: int
    total_steps: int
    metrics: dict
    logged: bool = True


@dataclass(frozen=True)
class Validation(Event):
    kind: ClassVar[str] = "validation"
    step: int
    val_loss: float


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass(frozen=True)
class TrainFinished(Event):
    """`summary`: what train_summary.json holds."""
    kind: ClassVar[str] = "train_finished"
    steps: int
    summary: dict


@dataclass(frozen=True)
class EvalProgress(Event):
    """`done` of `total` units (examples, windows, tasks) of one stage of one system's evaluation."""
    kind: ClassVar[str] = "eval_progress"
    system: str
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class EvalFinished(Event):
    kind: ClassVar[str] = "eval_finished"
    verdict: str
    report_path: str | None = None


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "finished"
    run_dir: str


@dataclass(frozen=True)
class RunFailed(Event):
    """The run raised `error` (the exception is re-raised after this event); `step`: the last
    optimizer step completed, None when training had not started."""
    kind: ClassVar[str] = "failed"
    error: str
    step: int | None = None


Listener = Callable[[Event], None]


class Events:
    """Fan-out of events to listeners, in the order they were added."""

    def __init__(self, *listeners: Listener):
        self.listeners: list[Listener] = list(listeners)

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    def message(self, text: str, level: str = "info") -> None:
        self.emit(Message(text, level))


def print_messages(event: Event) -> None:
    """The plainest listener: print Message lines and the eval verdict, ignore the rest (library use
    without a CLI; the CLI's ConsoleDisplay leaves the verdict to the report table it prints last)."""
    if isinstance(event, Message):
        print(event.text)
    elif isinstance(event, EvalFinished) and event.verdict:
        print(event.verdict)
