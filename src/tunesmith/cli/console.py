"""The CLI's listener for run events: messages as lines, training and evaluation as rich progress bars.

Use it as a context manager so bars are stopped even when the run fails:

    with ConsoleDisplay(console, progress=not quiet) as display:
        run(cfg, events=Events(display))
"""

from __future__ import annotations

from rich.console import Console

from tunesmith.events import (
    EvalFinished,
    EvalProgress,
    Event,
    Message,
    RunFailed,
    StepMetrics,
    TrainFinished,
    TrainStarted,
)


class ConsoleDisplay:
    def __init__(self, console: Console | None = None, progress: bool = True):
        self.console = console or Console()
        self.progress = progress
        self._train = None       # (Progress, task id) while training runs
        self._eval = None        # Progress while evaluation runs
        self._eval_tasks: dict[str, int] = {}

    def __enter__(self) -> ConsoleDisplay:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __call__(self, event: Event) -> None:
        if isinstance(event, Message):
            style = "yellow" if event.level == "warning" else None
            self.console.print(event.text, style=style, markup=False, highlight=False)
        elif isinstance(event, RunFailed):
            self.close()  # the CLI prints the error next; a live bar would draw over it
        elif not self.progress:
            return
        elif isinstance(event, TrainStarted):
            self._start_train(event)
        elif isinstance(event, StepMetrics) and self._train is not None:
            bar, task = self._train
            bar.update(task, completed=event.step, loss=event.metrics.get("loss", float("nan")),
                       tps=event.metrics.get("tokens_per_s", 0.0))
        elif isinstance(event, TrainFinished):
            self._stop_train()
        elif isinstance(event, EvalProgress):
            self._eval_progress(event)
        elif isinstance(event, EvalFinished):
            self._stop_eval()

    def close(self) -> None:
        self._stop_train()
        self._stop_eval()

    def _start_train(self, event: TrainStarted) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._stop_train()
        bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console)
        bar.start()
        task = bar.add_task("train", total=event.total_steps, completed=event.start_step, loss=float("nan"), tps=0.0)
        self._train = (bar, task)

    def _stop_train(self) -> None:
        if self._train is not None:
            self._train[0].stop()
            self._train = None

    def _eval_progress(self, event: EvalProgress) -> None:
        if self._eval is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._eval = Progress(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console)
            self._eval.start()
        # One bar per stage (generation, perplexity, judge ...); its label names the system at work.
        task = self._eval_tasks.get(event.stage)
        if task is None:
            task = self._eval.add_task(event.stage, total=event.total)
            self._eval_tasks[event.stage] = task
        self._eval.update(task, completed=event.done, total=event.total, description=f"{event.stage} {event.system}")

    def _stop_eval(self) -> None:
        if self._eval is not None:
            self._eval.stop()
            self._eval = None
            self._eval_tasks = {}
