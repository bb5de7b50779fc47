"""Fine-tuning methods. Each module registers itself; `prepare_method` is the single entry point."""

from tunesmith.methods.registry import METHODS, Method, Prepared, get_method, prepare_method

# Importing the modules registers the methods.
from tunesmith.methods import full, lora  # noqa: E402,F401

__all__ = ["METHODS", "Method", "Prepared", "get_method", "prepare_method"]
