"""The systems an evaluation scores, side by side on the same examples.

The systems are the base model under each prompting baseline of `eval.baselines` (eval/baselines.py:
zero-shot, few-shot, retrieval-few-shot, rag), the fine-tuned model and, with `compare_to`, one more
model or adapter. For an adapter the base systems run on the same weights with the adapter switched
off, so one copy of the model serves them all.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.errors import ConfigError
from tunesmith.eval.baselines import Baseline, baseline_names, few_shot_messages, get_baseline
from tunesmith.models.adapters import adapters_off, has_adapter

__all__ = ["SYSTEM_NAMES", "SystemSpec", "build_systems", "conversations", "few_shot_messages"]

SYSTEM_NAMES = {**{name: get_baseline(name).system for name in baseline_names()}, "tuned": "tuned"}


@dataclass
class SystemSpec:
    name: str
    model: object
    adapter_off: bool = False
    baseline: Baseline | None = None   # how a base system builds its prompts; None: each example's own

    def active(self):
        """Context in which `model` behaves as this system (the adapter off for base systems)."""
        return adapters_off(self.model) if self.adapter_off else contextlib.nullcontext()

    @property
    def adds_context(self) -> bool:
        """Whether the prompts carry more than the example's own turns (demonstrations, passages)."""
        return self.baseline is not None and self.baseline.name != "zero-shot"


def conversations(spec: SystemSpec, chat: list[Sample], pool: list[Sample] | None, cfg: EvalConfig) -> list[list[dict]]:
    """The prompts `spec` answers: each example's own, or as its baseline builds them."""
    if spec.baseline is None:
        return [s.prompt_messages() for s in chat]
    return spec.baseline.conversations(chat, pool or [], cfg)


def build_systems(tuned_model, baselines: list[str], base_model=None) -> list[SystemSpec]:
    """One system per baseline name (unknown names are a ConfigError), then "tuned"."""
    base = base_model if base_model is not None else tuned_model
    if base_model is None and not has_adapter(tuned_model) and baselines:
        raise ValueError("baselines need the base model when the tuned model is not an adapter")
    out = []
    for name in baselines:
        baseline = get_baseline(name)
        out.append(SystemSpec(baseline.system, base, adapter_off=base is tuned_model, baseline=baseline))
    if tuned_model is not None:
        out.append(SystemSpec("tuned", tuned_model))
    return out


def _base_path_of(model) -> str | None:
    """Where the tuned model's base weights came from (peft and transformers both record it)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        path = next(iter(peft_config.values())).base_model_name_or_path
        if path:
            return path
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None


def load_compare_system(value: str, tuned_model=None) -> SystemSpec:
    """`compare_to` as a system: an adapter folder (on its recorded base) or any model model.base accepts."""
    from tunesmith.models import load_model, resolve_base

    path = Path(value)
    peft_cfg, meta = path / "adapter_config.json", path / "tunesmith.json"
    if peft_cfg.is_file() or (meta.is_file() and not (path / "config.json").is_file()):
        from tunesmith.methods import load_trained

        recorded = json.loads(peft_cfg.read_text()).get("base_model_name_or_path") if peft_cfg.is_file() else None
        from tunesmith.adapter_record import read_record

        base = (read_record(path) or {}).get("base")
        base = (_base_path_of(tuned_model) if tuned_model is not None else None) or recorded or base
        if not base:
            raise ConfigError(f"eval.compare_to: adapter {path} does not record its base model",
                              hint="compare with a merged model folder instead")
        # PEFT layout or one of tunesmith's own adapter formats, like `tunesmith eval --adapter`.
        return SystemSpec("compare", load_trained(load_model(resolve_base(base)), path).eval())
    return SystemSpec("compare", load_model(resolve_base(value)).eval())


def base_and_tuned(systems: list[SystemSpec]) -> tuple[SystemSpec, SystemSpec] | None:
    """The base/tuned pair that checks beyond the task (forgetting, lm-eval) compare, or None.

    The base is whichever base system runs (its few shots do not matter to those checks), else the
    tuned adapter switched off.
    """
    tuned = next((s for s in systems if s.name == "tuned"), None)
    if tuned is None:
        return None
    base = next((s for s in systems if s.name.startswith("base_")), None)
    if base is not None:
        return SystemSpec("base", base.model, adapter_off=base.adapter_off), tuned
    if has_adapter(tuned.model):
        return SystemSpec("base", tuned.model, adapter_off=True), tuned
    return None


def _quantized_bits(model) -> int | None:
    """4 or 8 when linear layers hold bitsandbytes weights (a QLoRA base), else None."""
    for module in model.modules():
        kind = type(getattr(module, "weight", None)).__name__
        if kind == "Params4bit":
            return 4
        if kind == "Int8Params":
            return 8
    return None


def baseline_weights(systems: list[SystemSpec]) -> dict | None:
    """What the base systems ran on, so a QLoRA report does not pass its 4-bit base off as the original."""
    base = next((s for s in systems if s.name.startswith("base_")), None)
    if base is None:
        return None
    bits = _quantized_bits(base.model)
    if base.adapter_off and bits:
        note = (f"the {bits}-bit quantized base the adapter was trained on, with the adapter switched off; "
                "not the full-precision base model, which may score differently")
    elif base.adapter_off:
        note = "the tuned model's own base weights with the adapter switched off"
    else:
        note = "a separately loaded base model" + (f" ({bits}-bit quantized)" if bits else "")
    return {"source": "adapter_off" if base.adapter_off else "separate", "quantized_bits": bits, "note": note}
