"""Training settings read from the run itself: `train.lr`, `train.epochs`, `data.val_split`,
`train.eval_every` and `train.early_stopping_patience` set to "auto".

Each rule is one small function of what the run knows once its data and model are loaded (the
method, the objective, the model's width, the number of examples), so a user can predict it and the
docs can state it. `resolve_training` returns the config with numbers in place of every "auto" and
one line per resolved setting, which the run prints; the trainer itself only ever sees numbers.

Torch-free: config validation and `tunesmith config init` import the rules' descriptions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The width the methods' rates were measured at: SmolLM2-135M, the embedded default (hidden 576).
REFERENCE_WIDTH = 576
# A few hundred examples must get enough optimizer steps to learn: more passes until this many...
MIN_STEPS = 100
# ...but never more passes than this (small data overfits; early stopping watches the rest).
MAX_EPOCHS = 5
# data.val_split "auto": hold out this share when the data is large enough to spare it ...
VAL_FRACTION = 0.1
VAL_MIN_TRAIN = 200     # ... i.e. at least 20 validation examples
VAL_MAX = 200           # ... and never more than this many (validation runs ten times a run)
EVALS_PER_RUN = 10
PATIENCE = 3

DESCRIPTIONS = {
    "lr": (f"peak learning rate; 'auto': the method's rate (`tunesmith methods` lists it, measured at width "
           f"{REFERENCE_WIDTH}), times sqrt({REFERENCE_WIDTH}/hidden size) for wider models, times the objective's "
           "factor (0.2 for dpo/orpo/kto); the run states the number"),
    "epochs": (f"passes over the training data (ignored when max_steps > 0); 'auto': 1, or more for small data so "
               f"the run takes at least {MIN_STEPS} optimizer steps (at most {MAX_EPOCHS} passes)"),
    "val_split": (f"fraction of train held out for validation when data.val is empty; 'auto': "
                  f"{VAL_FRACTION:.0%} (at most {VAL_MAX} examples) when train has at least {VAL_MIN_TRAIN} examples, "
                  "else none"),
    "eval_every": (f"validation loss every N steps; 0 only at the end; 'auto': {EVALS_PER_RUN} validations per run "
                   "when there is validation data and the run makes more than one pass, else only at the end"),
    "early_stopping_patience": (f"stop after N evaluations without improvement (the best weights are kept); "
                                f"0 disables; 'auto': {PATIENCE} when validation runs during training, else off"),
}


def auto_lr(method_lr: float, hidden_size: int | None, objective_factor: float = 1.0) -> float:
    """The method's rate, lower for wider models: Adam moves every weight by about the rate, and a
    wider layer sums more of those moves (muP scales by 1/width; the square root is the cautious
    middle, and gives LoRA 3.75e-4 on a 4096-wide 7B model, inside the range people tune to).
    Never raised for narrower models: tiny random test models would train on rates nobody measured."""
    width = hidden_size or REFERENCE_WIDTH
    scale = min(1.0, math.sqrt(REFERENCE_WIDTH / width))
    return float(f"{method_lr * scale * objective_factor:.3g}")


def auto_epochs(n_train: int, batch_size: int) -> float:
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return float(min(MAX_EPOCHS, max(1, math.ceil(MIN_STEPS / steps_per_epoch))))


def auto_val_fraction(n_train: int) -> float:
    if n_train < VAL_MIN_TRAIN:
        return 0.0
    return min(VAL_FRACTION, VAL_MAX / n_train)


def auto_eval_every(total_steps: int, steps_per_epoch: int, has_val: bool) -> int:
    if not has_val or total_steps <= steps_per_epoch:
        return 0
    return max(1, total_steps // EVALS_PER_RUN)


def auto_patience(eval_every: int) -> int:
    return PATIENCE if eval_every else 0


@dataclass
class Resolved:
    """What every "auto" became, and why, for the run's output and its train_summary.json."""
    values: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)

    def add(self, key: str, value, reason: str) -> None:
        self.values[key] = value
        self.reasons[key] = reason

    def line(self) -> str:
        """One line for the run's output: each setting, its number and why ("" when nothing was auto)."""
        return "; ".join(f"{key}: auto = {self.values[key]:g} ({self.reasons[key]})" for key in self.values)

    def as_dict(self) -> dict:
        return {key: {"value": self.values[key], "reason": self.reasons[key]} for key in self.values}


def resolve_val_split(cfg, n_samples: int, resolved: Resolved):
    """cfg with data.val_split a number (before the split is drawn)."""
    if cfg.data.val_split != "auto":
        return cfg
    fraction = 0.0 if cfg.data.val else auto_val_fraction(n_samples)
    if not cfg.data.val:
        held = round(fraction * n_samples)
        resolved.add("data.val_split", fraction,
                     f"{held} of {n_samples} examples held out" if fraction else
                     f"{n_samples} examples: fewer than {VAL_MIN_TRAIN}, all kept for training")
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_split": fraction})})


def resolve_lr(cfg, *, method_lr: float, method_name: str, hidden_size: int | None, objective_factor: float,
               resolved: Resolved):
    """cfg with train.lr a number (before the method is prepared: it takes the rate)."""
    if cfg.train.lr != "auto":
        return cfg
    lr = auto_lr(method_lr, hidden_size, objective_factor)
    why = f"{method_name}'s {method_lr:g}"
    if hidden_size and hidden_size > REFERENCE_WIDTH:
        why += f" x sqrt({REFERENCE_WIDTH}/{hidden_size})"
    if objective_factor != 1.0:
        why += f" x {objective_factor:g} for {cfg.objective.name}"
    resolved.add("train.lr", lr, why)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": lr})})


def resolve_schedule(train, *, n_train: int, n_val: int, resolved: Resolved | None = None):
    """`train` (a TrainConfig) with epochs / eval_every / early_stopping_patience as numbers, from the
    number of training items and validation items the trainer gets."""
    resolved = resolved if resolved is not None else Resolved()
    update: dict = {}
    steps_per_epoch = max(1, math.ceil(n_train / train.batch_size))
    if train.epochs == "auto":
        update["epochs"] = auto_epochs(n_train, train.batch_size)
        if not train.max_steps:   # max_steps decides the length: the number is kept, not announced
            resolved.add("train.epochs", update["epochs"],
                         f"{n_train} examples, batch {train.batch_size}: {steps_per_epoch} steps a pass")
    epochs = update.get("epochs", train.epochs)
    total = train.max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    if train.eval_every == "auto":
        update["eval_every"] = auto_eval_every(total, steps_per_epoch, n_val > 0)
        resolved.add("train.eval_every", update["eval_every"],
                     "no validation data" if not n_val else
                     f"{EVALS_PER_RUN} validations over {total} steps" if update["eval_every"] else
                     "one pass: validation at the end")
    if train.early_stopping_patience == "auto":
        update["early_stopping_patience"] = auto_patience(update.get("eval_every", train.eval_every))
        resolved.add("train.early_stopping_patience", update["early_stopping_patience"],
                     "validation during training" if update["early_stopping_patience"] else "no validation during training")
    return train.model_copy(update=update) if update else train
