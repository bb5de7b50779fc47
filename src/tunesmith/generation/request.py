"""One generation request as the engine sees it, and the events it sends back."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

_ids = itertools.count(1)


@dataclass
class Event:
    index: int                     # which of the request's n choices
    text: str = ""                 # new text since the last event
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: Exception | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass
class GenRequest:
    prompt_ids: list[int]
    sink: Callable[[Event], None]          # thread-safe: called from the engine thread
    adapter: str | None = None             # None: the base model
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None               # None: no top-k (the OpenAI API has none; offline eval uses the model's)
    seed: int | None = None
    eft_beta: float | None = None          # emulated fine-tuning: this request's beta (None: the engine's)
    stop: tuple[str, ...] = ()
    timeout_s: float = 600.0
    index: int = 0
    text: bool = True                      # send text deltas (offline work reads `generated` at the end instead)
    check: Callable[[list[int]], bool] | None = None   # called after each token; True stops the row (loop guard)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # filled in by the engine
    rid: int = field(default_factory=lambda: next(_ids))
    created: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    sampled: int = 0
    emitted: int = 0                       # characters of decoded text already sent
    done: bool = False
    generator: torch.Generator | None = None
    speculating: bool = True               # prompt lookup: switched off when its drafts are mostly rejected
    drafted: int = 0
    accepted_drafts: int = 0
    verifications: int = 0                 # forward passes that verified a draft of this row

    def __post_init__(self):
        if self.temperature > 0:
            # An explicit seed makes sampling reproducible regardless of what else is in the batch.
            seed = self.seed if self.seed is not None else random.randrange(2**63)
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def deadline(self) -> float:
        return self.created + self.timeout_s

    def group(self, fallback_names: set[str]) -> tuple:
        """Requests with equal groups may share a batch."""
        if self.adapter in fallback_names:
            # peft's generate takes one temperature/top_p per batch.
            return ("peft", self.adapter, self.temperature, self.top_p, self.seed if self.temperature > 0 else None)
        return ("lora",)
