"""What a training objective is, and the registry that names them.

The trainer owns the loop (steps, accumulation, processes, precision, checkpoints); an objective
owns what a batch is and what its loss is. The contract that keeps accumulation exact:

- `loss(model, batch)` returns *sums* over the batch: the loss summed over its units (target
  tokens for SFT; pairs, for a preference objective) and the number of those units, plus any
  metrics, also summed over the units.
- `units(batch)` gives that count before the forward pass, so the trainer can scale every
  micro-batch's backward by 1 / (units of the whole step, over all processes).

The step's loss and metrics are then sum / units over all its micro-batches and processes, the same
numbers one big batch gives. Losses themselves live in the library (train/loss.py); objectives
compose them, as torchtune's recipes share its losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from typing import Any, ClassVar, NamedTuple

import torch

from tunesmith.errors import DataError, UserError
from tunesmith.train.objective_options import ObjectiveOptions


class ObjectiveLoss(NamedTuple):
    loss: torch.Tensor               # () summed over the batch's units; backward runs from it
    units: torch.Tensor | int        # what `loss` is summed over (the same count as `Objective.units`)
    metrics: dict[str, torch.Tensor]  # name -> () sum over the units, one entry per `metric_names`


class Objective:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Metrics the objective logs per step besides `loss` (metrics.jsonl columns); () keeps the hot
    # path free of any per-metric reduction.
    metric_names: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[type] = ObjectiveOptions   # the `objective:` section this objective takes
    data: ClassVar[str] = ""                      # the data it trains on, for `tunesmith objectives`
    # train.lr "auto" is the method's rate times this: preference losses move further per step than SFT.
    lr_factor: ClassVar[float] = 1.0

    @classmethod
    def tokenize(cls, tokenizer, samples: list, data_cfg) -> tuple[list, Any]:
        """(items the collate takes, stats with `as_dict()` and the counts the run prints) from samples;
        data this objective cannot train on is a DataError naming the record."""
        raise NotImplementedError

    @classmethod
    def lengths(cls, tokenizer, samples: list, data_cfg) -> list[int]:
        """The lengths `tokenize` compares with data.max_len, one per item it would keep or drop
        (what `data.max_len: auto` is resolved from); the same DataError as `tokenize` for data
        this objective cannot train on."""
        raise NotImplementedError

    @classmethod
    def for_run(cls, prepared, tokenizer, data_cfg, options=None) -> Objective:
        """The objective with a run's settings (padding id, max_len, packing, the method's needs) and
        its `objective:` options."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError for run settings that make no sense with this objective (before any work)."""

    def started(self, step: int) -> None:
        """Called by `fit` before its first step (`step` > 0 when resuming)."""

    def listeners(self, events) -> list:
        """Run-event listeners the trainer subscribes for this objective (e.g. a warning on a bad trend)."""
        return []

    def collate(self, examples: list) -> Any:
        """One micro-batch from tokenized examples."""
        raise NotImplementedError

    def units(self, batch) -> int:
        """How many units the batch's loss is summed over."""
        raise NotImplementedError

    def tokens(self, batch) -> tuple[int, int]:
        """(real tokens, tokens computed including padding) of the batch, for tokens/s and packing efficiency."""
        raise NotImplementedError

    def loss(self, model, batch) -> ObjectiveLoss:
        raise NotImplementedError

    def to_device(self, batch, device):
        """The batch with its tensors on `device` (a dataclass batch by default)."""
        moved = {f.name: value.to(device) for f in dataclasses.fields(batch)
                 if isinstance(value := getattr(batch, f.name), torch.Tensor)}
        return dataclasses.replace(batch, **moved)

    def context(self, model) -> contextlib.AbstractContextManager:
        """What the model needs around the whole run of this objective's batches (entered by `fit`)."""
        return contextlib.nullcontext()


class ObjectiveModule(torch.nn.Module):
    """The model with an objective's loss as its forward: the module accelerate prepares, so DDP's
    gradient sync hooks see the whole loss computation."""

    def __init__(self, model: torch.nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch) -> ObjectiveLoss:
        return self.objective.loss(self.model, batch)


def refuse_records(samples, allowed: set[str], why: str, hint: str) -> None:
    """DataError naming the first record whose kind is not in `allowed`: "FILE:LINE: <why>; this record is <kind> data"."""
    for s in samples:
        if s.kind not in allowed:
            where = f"{s.source}: " if s.source else ""
            raise DataError(f"{where}{why}; this record is {s.kind} data", hint=hint)


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    from tunesmith.train.objective_options import OPTIONS

    # The built-in objectives' options are registered where config validation finds them without
    # torch (train/objective_options.py); an objective defined elsewhere brings its own here.
    if OPTIONS.setdefault(cls.name, cls.options) is not cls.options:
        raise TypeError(f"objective '{cls.name}': options {cls.options.__name__} differ from the registered "
                        f"{OPTIONS[cls.name].__name__}")
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        guess = difflib.get_close_matches(name, list(OBJECTIVES), n=1)
        extra = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise UserError(f"unknown training objective '{name}'{extra}", hint=f"available: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
