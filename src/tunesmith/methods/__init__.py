"""Fine-tuning methods. Each module of this package defines one method (or a family) with its options
model and registers it; the first look-up in METHODS imports them all (registry.MethodTable). `prepare_method` is the single entry point."""

from tunesmith.methods.options import MethodOptions
from tunesmith.methods.registry import (
    METHODS,
    Method,
    Prepared,
    check_run,
    discover,
    get_method,
    load_trained,
    method_options,
    prepare_method,
    register_method,
    require_mergeable,
    unregister_method,
)

__all__ = ["METHODS", "Method", "MethodOptions", "Prepared", "check_run", "discover", "get_method", "load_trained", "method_options",
           "prepare_method", "register_method", "require_mergeable", "unregister_method"]
