"""The run folder (`output.dir`): where each output of a run lives, in one place.

Code that writes or reads a run's files asks a `RunDir` for the path instead of joining names, so
the layout is stated once: here, and in the table of docs/training.md.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.io_utils import is_within

# checkpoints/step-000042: zero-padded so names sort in step order.
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


class RunDir(os.PathLike):
    """One run's folder. `os.PathLike`, so `Path(run_dir)` and `open(run_dir / ...)`-style callers keep working."""

    # Everything a run writes here. A fresh run (no --resume) removes these first, so metrics,
    # checkpoints and reports never mix two runs (a stale checkpoint would also be what --resume
    # picks). Anything else in the folder is the user's and stays.
    OUTPUTS = ("config.yaml", "data_stats.json", "metrics.jsonl", "tensorboard", "loss.png", "checkpoints",
               "adapter", "model", "merged", "train_summary.json",
               "report.md", "report.json", "report.png", "predictions.jsonl")

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # --- what a run writes, in the order it writes it -------------------------------------------

    @property
    def config(self) -> Path:
        """The resolved run config (defaults filled in, overrides applied)."""
        return self.root / "config.yaml"

    @property
    def data_stats(self) -> Path:
        return self.root / "data_stats.json"

    @property
    def metrics(self) -> Path:
        """One JSON row per logged training step (train/logbook.py)."""
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    @property
    def adapter(self) -> Path:
        """The result of an adapter method (PEFT layout, or one of ours with its marker file)."""
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        """The result of a method that changes the model itself (full, freeze, Delta-LoRA): an HF folder."""
        return self.root / "model"

    def final(self, kind: str) -> Path:
        """Where the trained result goes for a method of this `Prepared.kind` ("adapter" or "full")."""
        return self.adapter if kind == "adapter" else self.model

    @property
    def train_summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_png(self) -> Path:
        return self.root / "report.png"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.jsonl"

    @property
    def merged(self) -> Path:
        """Base + adapter folded together (output.merge)."""
        return self.root / "merged"

    def outputs(self) -> list[Path]:
        return [self.root / name for name in self.OUTPUTS]

    # --- starting a run -------------------------------------------------------------------------

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Raise a UserError when a run cannot go into this folder."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output.dir {self.root} is a file, not a folder", hint="set output.dir to a folder path")
        if not resume and not overwrite and self.root.is_dir() and any(self.root.iterdir()):
            raise UserError(f"{self.root} already holds a run",
                            hint="use --resume, another output.dir, or output.overwrite=true")

    def clear_outputs(self, keep: Iterable[str | os.PathLike] = ()) -> None:
        """Remove the previous run's outputs. Paths in `keep` (the run's inputs: base model, data
        files) and anything holding one of them survive, even when named like an output."""
        keep = [k for k in keep if k]
        for path in self.outputs():
            if any(is_within(k, path) for k in keep):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def prepare(self, *, resume: bool, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
        """Check the folder and, for a fresh run, clear the previous run's outputs (main process only;
        the others wait, so no process looks at the folder while it is being cleared)."""
        import torch
        from accelerate import PartialState

        self.check(resume=resume, overwrite=overwrite)
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.is_main_process:
            if not resume:
                self.clear_outputs(keep=inputs)
            self.root.mkdir(parents=True, exist_ok=True)
        state.wait_for_everyone()
