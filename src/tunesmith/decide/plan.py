"""How many optimizer steps each fine-tune gets from the time budget and a measured step time."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tunesmith.errors import UserError

CURVE_FRACTIONS = (0.25, 0.5, 1.0)


@dataclass
class StepPlan:
    step_s: float                   # measured wall time of one optimizer step
    steps: dict[float, int]         # fraction of the training data -> optimizer steps
    capped_by_epochs: bool
    curve_dropped: bool             # the budget fits the full fine-tune but not the learning curve too

    def as_dict(self) -> dict:
        out = asdict(self)
        out["steps"] = {str(k): v for k, v in self.steps.items()}
        return out


def plan_steps(budget_s: float, step_s: float, n_train: int, batch_size: int, max_epochs: float,
               learning_curve: bool) -> StepPlan:
    """Steps per fine-tune so all of them together fit `budget_s`.

    The learning-curve runs train on 25 % and 50 % of the data for the same number of epochs as the
    full run (a quarter and a half of its steps), so together they cost 1.75 full runs. A budget too
    small for one step is a UserError, raised before the real fine-tune starts.
    """
    if budget_s < step_s:
        raise UserError(f"--budget-minutes {budget_s / 60:g}: one training step takes {step_s:.1f} s here, "
                        "longer than the whole budget",
                        hint=f"give at least --budget-minutes {math.ceil(step_s * 10 / 60 * 10) / 10:g} (ten steps)")
    per_epoch = math.ceil(n_train / batch_size)
    cap = max(1, math.ceil(max_epochs * per_epoch))
    fractions = CURVE_FRACTIONS if learning_curve else (1.0,)
    full = math.floor(budget_s / (step_s * sum(fractions)))
    curve_dropped = learning_curve and full < 1
    if curve_dropped:
        fractions, full = (1.0,), math.floor(budget_s / step_s)
    capped = full > cap
    full = min(full, cap)
    return StepPlan(step_s, {f: max(1, round(f * full)) for f in fractions}, capped, curve_dropped)
