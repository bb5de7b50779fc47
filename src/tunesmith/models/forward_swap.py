"""Module forwards replaced for the length of a block, then put back as they were.

Several blocks swap a layer's forward this way (train/fused_lora.py, models/packed_linear.py,
generation/vocab_head.py) and may nest: a forward set as an instance attribute shadows the class's, so
restoring means putting back the instance forward an outer block had set, or removing ours."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from torch import nn


@contextlib.contextmanager
def forwards_replaced(replacements: Sequence[tuple[nn.Module, Callable]]):
    """Inside the block each module's forward is the callable paired with it; afterwards what it was."""
    saved = [(module, module.__dict__.get("forward")) for module, _ in replacements]
    for module, forward in replacements:
        module.forward = forward
    try:
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
