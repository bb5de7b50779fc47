"""The options a method takes: one pydantic model per method, the `method:` section of a run config.

Each method module defines its options model as a subclass of `MethodOptions` and names it in its
`Method.options`; the registry validates a `method:` section against the model of the method it
names. Field groups that several methods share are mixins here, so a key has one default, one
bound and one description wherever it is read.

This module imports only pydantic: `tunesmith.config` builds on it before any method is loaded.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MethodOptions(BaseModel):
    """Options common to every method: only its name. A method without options uses this model as is."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("lora", description="fine-tuning method; `tunesmith methods` lists them")


class LowRank(MethodOptions):
    r: int = Field(16, gt=0, description="LoRA rank")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")


class AdapterDropout(MethodOptions):
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input (on CPU its random mask costs about as much as the LoRA matmul)")


class TargetModules(MethodOptions):
    target_modules: str | list[str] = Field("all-linear", description="modules to adapt: 'all-linear' or a list of module names")


# Listed last-to-first: pydantic orders inherited fields from the far end of the MRO, and the
# starter file should read r, alpha, dropout, target_modules.
class AdapterShape(TargetModules, AdapterDropout, LowRank):
    """The low-rank adapter's shape: r, alpha, dropout, target_modules."""


# Every method accepts these keys, and one that does not use them ignores them, so switching
# `method.name` alone (`--set method.name=vera` on a config that sets r) never breaks a config.
SHARED_KEYS = tuple(k for k in AdapterShape.model_fields if k != "name")


def option_keys(model: type[MethodOptions]) -> list[str]:
    """The keys a method takes, in declaration order, without `name`."""
    return [k for k in model.model_fields if k != "name"]
