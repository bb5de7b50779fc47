"""Training metrics as a run-event listener: metrics.jsonl (always), TensorBoard (when installed),
loss.png (when training finishes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.events import Event, StepMetrics, TrainFinished, TrainStarted
from tunesmith.io_utils import write_jsonl
from tunesmith.run_dir import RunDir


class Logbook:
    """Subscribe it to a run's events: it writes the StepMetrics rows marked `logged`, forgets rows
    past the step a resumed run restarts from, and draws the loss plot at TrainFinished."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.run_dir = RunDir(run_dir)
        self.path = self.run_dir.metrics
        self.enabled = enabled
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir.tensorboard))
            except Exception:  # tensorboard is optional
                self._tb = None

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, StepMetrics):
            if event.logged:
                self.log(event.metrics)
        elif isinstance(event, TrainStarted):
            if event.start_step:
                self.truncate_after(event.start_step)
        elif isinstance(event, TrainFinished):
            plot_losses(self.rows(), self.run_dir.loss_plot)
            self.close()

    def truncate_after(self, step: int) -> None:
        """On resume, forget rows written after the checkpoint we resume from (and a torn last line)."""
        if not self.path.exists():
            return
        rows = [r for r in self.rows() if r.get("step", 0) <= step]
        write_jsonl(self.path, rows)  # atomic: a kill now leaves the old file or the new one

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def rows(self) -> list[dict]:
        return read_metrics(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path, skip_damaged: bool = False) -> list[dict]:
    """metrics.jsonl rows ([] when there is no file). A kill in the middle of an append leaves half a
    last line, which is dropped; a damaged line elsewhere is an error, or skipped with `skip_damaged`
    (a report's side check should not fail over it)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            if skip_damaged:
                continue
            raise UserError(f"{path}:{n}: not a JSON row; the metrics log is damaged",
                            hint="start the run again without --resume") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_losses(rows: list[dict], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / target token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
