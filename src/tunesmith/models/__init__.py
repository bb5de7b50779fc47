"""Base-model resolution and loading."""

from tunesmith.models.load import load_model, load_tokenizer, model_device
from tunesmith.models.resolve import resolve_base

__all__ = ["load_model", "load_tokenizer", "model_device", "resolve_base"]
