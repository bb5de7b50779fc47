"""Timing a fine-tune from its events: wall time of each step, CPU-seconds of the whole training."""

from __future__ import annotations

import statistics
import time

from tunesmith.events import Event, StepMetrics, TrainFinished, TrainStarted


class TrainClock:
    """An event listener: pass it to `pipeline.run(events=...)` beside the display.

    CPU time is the process's (every thread), from TrainStarted to TrainFinished, so model loading
    and the evaluation after training are not counted as training cost.
    """

    def __init__(self):
        self.step_ends: list[float] = []
        self.cpu_s = self.wall_s = 0.0
        self._cpu0 = self._wall0 = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStarted):
            self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        elif isinstance(event, StepMetrics):
            self.step_ends.append(time.perf_counter())
        elif isinstance(event, TrainFinished) and self._cpu0 is not None:
            self.cpu_s = time.process_time() - self._cpu0
            self.wall_s = time.perf_counter() - self._wall0

    def step_seconds(self) -> float:
        """Median wall time of a step after the first (which pays for warm-up)."""
        gaps = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])]
        if not gaps:
            raise RuntimeError("the probe run made fewer than two steps")
        return statistics.median(gaps)
