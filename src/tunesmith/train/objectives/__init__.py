"""Training objectives: what a batch is, what its loss is, what it logs. The trainer takes one.

`sft`, and the preference objectives `dpo`, `orpo` (pairs) and `kto` (unpaired feedback). Each
names its options model (train/objective_options.py), the `objective:` section of a run config.
"""

from tunesmith.train.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveLoss,
    ObjectiveModule,
    get_objective,
    register_objective,
)
from tunesmith.train.objectives.kto import KTO
from tunesmith.train.objectives.preference import DPO, ORPO
from tunesmith.train.objectives.sft import SFT

__all__ = ["DPO", "KTO", "OBJECTIVES", "ORPO", "SFT", "Objective", "ObjectiveLoss", "ObjectiveModule", "get_objective",
           "register_objective"]
