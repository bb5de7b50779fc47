"""OpenAI-compatible serving: many adapters over one base model, batched per row.

`build_state` loads the base and the adapters; `create_app` wraps them in a FastAPI app;
`tunesmith serve` (cli/serve.py) runs it under uvicorn. The names below load on first use, so
`tunesmith.serve.options` (what the CLI needs to build its flags) imports without fastapi.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"create_app": "tunesmith.serve.app", "ServeOptions": "tunesmith.serve.options",
            "ServerState": "tunesmith.serve.state", "build_state": "tunesmith.serve.state"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunesmith.serve' has no attribute '{name}'")
