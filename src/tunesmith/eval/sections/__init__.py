"""The sections of an evaluation report, one module each, found and registered on import.

Adding a check to `tunesmith eval` is one new module here: a subclass of `EvalSection` decorated
with `@register` (see base.py and docs/eval.md). Every module of this package is imported, so
there is no list to keep; a module that fails to import is an error, not a silently missing check.
"""

from __future__ import annotations

import importlib
import pkgutil

from tunesmith.eval.sections.base import (
    EvalContext,
    EvalSection,
    SectionResult,
    register,
    registered,
    unregister,
)

__all__ = ["EvalContext", "EvalSection", "SectionResult", "register", "registered", "unregister"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
