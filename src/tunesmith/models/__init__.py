"""Base-model resolution and loading, and the two helpers every stage uses on a loaded model."""

from tunesmith.models.adapters import adapters_off, has_adapter, register_adapter_switch, unwrap
from tunesmith.models.load import load_model, load_tokenizer, model_device
from tunesmith.models.resolve import resolve_base

__all__ = ["adapters_off", "has_adapter", "load_model", "load_tokenizer", "model_device", "register_adapter_switch",
           "resolve_base", "unwrap"]
