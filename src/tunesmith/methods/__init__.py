"""Fine-tuning methods. Each module registers itself; `prepare_method` is the single entry point."""

# Importing the modules registers the methods (in the order `tunesmith methods` lists them).
from tunesmith.methods import bottleneck, delta_lora, full, ia3, lora, prefix, prompt, spectrum, vera  # noqa: E402,F401
from tunesmith.methods.registry import (  # noqa: F401
                                        METHODS,
                                        Method,
                                        Prepared,
                                        check_run,
                                        get_method,
                                        load_trained,
                                        prepare_method,
                                        require_mergeable,
)

__all__ = ["METHODS", "Method", "Prepared", "check_run", "get_method", "load_trained", "prepare_method",
           "require_mergeable"]
