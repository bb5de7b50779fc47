"""Learning-rate schedules: linear warmup, then cosine, linear or constant."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


def lr_lambda(kind: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    decay = SCHEDULES[kind]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        span = max(1, total_steps - warmup_steps)
        return max(0.0, decay(min(1.0, (step - warmup_steps) / span)))

    return factor


def build_scheduler(optimizer, kind: str, total_steps: int, warmup_ratio: float):
    warmup = int(round(total_steps * warmup_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, total_steps, warmup))
