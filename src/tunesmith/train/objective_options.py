"""The options an objective takes: the `objective:` section of a run config, one pydantic model per
objective, registered under the objective's name.

Like `tunesmith.methods.options`, this module imports only pydantic: `tunesmith.config` validates
the section before torch is imported. The objective classes (train/objectives/) name these models; this module stays outside that package, whose
`__init__` imports torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from tunesmith.errors import ConfigError


class ObjectiveOptions(BaseModel):
    """Options every objective has: only its name. SFT takes no others."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("sft", description="training objective: sft, dpo, orpo or kto (`tunesmith objectives` lists them)")


OPTIONS: dict[str, type[ObjectiveOptions]] = {}


def objective_options(name: str):
    """Class decorator: `name`'s options model (the objective class itself names it as `options`)."""
    def register(cls: type[ObjectiveOptions]) -> type[ObjectiveOptions]:
        OPTIONS[name] = cls
        return cls
    return register


objective_options("sft")(ObjectiveOptions)


class Beta(ObjectiveOptions):
    beta: float = Field(0.1, gt=0.0, description="strength of the preference term: DPO/KTO's KL weight, ORPO's odds-ratio weight")


class Reference(ObjectiveOptions):
    reference: Literal["auto", "base"] = Field("auto", description=(
        "the weights rewards are measured against: 'auto' = the adapter in model.adapter, frozen, when set, "
        "else the starting weights (an adapter switched off, no second copy); 'base' = the base model without any adapter"))
    check_reference: bool = Field(True, description=(
        "stop at step 0 unless the policy equals the reference (sigmoid DPO loss ln 2 within 0.01)"))


class SFTWeight(ObjectiveOptions):
    sft_weight: float = Field(0.0, ge=0.0, description=(
        "add this times the chosen answer's per-token NLL to the loss (keeps the chosen likelihood from falling; RPO, LLaMA-Factory's pref_ftx)"))


@objective_options("dpo")
class DPOOptions(SFTWeight, Reference, Beta):
    name: str = "dpo"
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description=(
        "sigmoid: DPO; ipo: squared loss on per-token log-ratio margins (IPO); hinge: SLiC's hinge on the margin"))
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description=(
        "sigmoid only: assume this share of the labels is flipped (conservative DPO)"))


@objective_options("orpo")
class ORPOOptions(Beta):
    name: str = "orpo"


@objective_options("kto")
class KTOOptions(Reference, Beta):
    name: str = "kto"
    desirable_weight: float = Field(1.0, gt=0.0, description="weight of desirable answers' loss (raise it when they are the minority)")
    undesirable_weight: float = Field(1.0, gt=0.0, description="weight of undesirable answers' loss")


def option_keys(model: type[ObjectiveOptions]) -> list[str]:
    return [k for k in model.model_fields if k != "name"]


def _error(key: str, value: Any, message: str) -> ValidationError:
    return ValidationError.from_exception_data("ObjectiveOptions", [
        {"type": PydanticCustomError("objective_option", "{message}", {"message": message}), "loc": (key,), "input": value}])


def parse_objective_section(value: Any) -> Any:
    """The `objective:` section as its objective's options model; a bare string names the objective."""
    if isinstance(value, ObjectiveOptions):
        if type(value) is OPTIONS.get(value.name):
            return value
        value = {**value.model_dump(exclude_unset=True), "name": value.name}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        return value
    name = value.get("name", "sft")
    if name not in OPTIONS:
        guess = difflib.get_close_matches(str(name), list(OPTIONS), n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise _error("name", name, f"objective.name: unknown objective '{name}'{hint}; available: {', '.join(OPTIONS)}")
    model = OPTIONS[name]
    for key in value:
        if key != "name" and key not in model.model_fields:
            guess = difflib.get_close_matches(str(key), option_keys(model), n=1, cutoff=0.6)
            hint = f" (did you mean 'objective.{guess[0]}'?)" if guess else ""
            takes = ", ".join(option_keys(model)) or "no options of its own"
            raise _error(key, value[key], f"unknown key 'objective.{key}' for objective '{name}'{hint}; "
                                          f"objective '{name}' takes: {takes}")
    return model.model_validate({**value, "name": name})


def objective_config(values: Mapping | str | None = None, /, **keys) -> ObjectiveOptions:
    """Options from plain keys, validated as the config section is: `objective_config("dpo", beta=0.2)`."""
    if isinstance(values, str):
        values = {"name": values}
    try:
        return parse_objective_section({**(values or {}), **keys})
    except ValidationError as exc:
        raise ConfigError("; ".join(e["msg"] if e["type"] == "objective_option"
                                    else f"objective.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                    for e in exc.errors())) from None
