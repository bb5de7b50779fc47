"""Training objectives: what a batch is, what its loss is, what it logs. The trainer takes one.

`sft` is the only one today; preference objectives (DPO, ORPO, KTO) register next to it.
"""

from tunesmith.train.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveLoss,
    ObjectiveModule,
    get_objective,
    register_objective,
)
from tunesmith.train.objectives.sft import SFT

__all__ = ["OBJECTIVES", "SFT", "Objective", "ObjectiveLoss", "ObjectiveModule", "get_objective",
           "register_objective"]
