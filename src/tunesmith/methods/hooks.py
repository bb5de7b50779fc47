"""What a method may change in the training loop, as typed optional callables.

Most methods need none of these: the trainer builds AdamW over `Prepared.param_groups` and saves the
trainable weights. A method that trains differently says so here instead of through string keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing torch here would make every CLI start (config, --help) pay for it
    import torch

Tensors = dict[str, "torch.Tensor"]


@dataclass
class TrainingHooks:
    # (param_groups, weight_decay=...) -> optimizer, replacing AdamW (LoRA+ and LoRA-FA build their own groups).
    optimizer: Callable[..., torch.optim.Optimizer] | None = None
    # Called after every optimizer step. Its presence also tells the trainer that base weights move,
    # so they cannot be cast once to the autocast dtype for the whole run (train/precision.py).
    after_step: Callable[[], None] | None = None
    # Method state outside the trainable parameters (Delta-LoRA's moved base weights): saved with each
    # checkpoint and restored on resume and when the best checkpoint is restored.
    extra_state: Callable[[], Tensors] | None = None
    load_extra_state: Callable[[Tensors], None] | None = None
