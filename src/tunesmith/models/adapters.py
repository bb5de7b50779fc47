"""Two questions every stage asks of a model: what is the plain base under any wrapper, and how do I
run it with its adapter switched off?

peft models answer with `get_base_model()` and `disable_adapter()`. Methods whose layers peft does
not know (bottleneck adapters) register a switch here instead of patching those names onto the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass


def unwrap(model):
    """The transformers model under a peft wrapper; the model itself when there is none."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass(frozen=True)
class AdapterSwitch:
    applies: Callable[[object], bool]                        # does this model carry such adapters?
    off: Callable[[object], AbstractContextManager]          # context in which they are bypassed


_SWITCHES: list[AdapterSwitch] = []


def register_adapter_switch(applies: Callable[[object], bool], off: Callable[[object], AbstractContextManager]) -> None:
    _SWITCHES.append(AdapterSwitch(applies, off))


def _switch(model) -> AdapterSwitch | None:
    for switch in _SWITCHES:
        if switch.applies(model):
            return switch
    if hasattr(model, "peft_config") and hasattr(model, "disable_adapter"):
        return AdapterSwitch(lambda m: True, lambda m: m.disable_adapter())
    return None


def has_adapter(model) -> bool:
    """True when `adapters_off(model)` can give the base model's behaviour without a second copy."""
    return _switch(model) is not None


def adapters_off(model) -> AbstractContextManager:
    """Context in which `model` computes as its base (peft's disable_adapter, or a registered switch).
    A model without adapters is already its base."""
    switch = _switch(model)
    return switch.off(model) if switch is not None else contextlib.nullcontext(model)
