"""Fine-tuning methods. Each module registers itself; `prepare_method` is the single entry point."""

from tunesmith.methods.registry import (METHODS, Method, Prepared, check_run, get_method, load_trained,  # noqa: F401
                                        prepare_method, require_mergeable)

# Importing the modules registers the methods (in the order `tunesmith methods` lists them).
from tunesmith.methods import (full, lora, delta_lora, vera, ia3, prefix, prompt,  # noqa: E402,F401
                               bottleneck, spectrum)

__all__ = ["METHODS", "Method", "Prepared", "check_run", "get_method", "load_trained", "prepare_method",
           "require_mergeable"]
