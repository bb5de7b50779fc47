"""OpenAI-compatible serving: many adapters over one base model, batched per row.

`build_state` loads the base and the adapters; `create_app` wraps them in a FastAPI app;
`tunesmith serve` (cli/serve.py) runs it under uvicorn.
"""

from tunesmith.serve.app import create_app
from tunesmith.serve.state import ServeOptions, ServerState, build_state

__all__ = ["ServeOptions", "ServerState", "build_state", "create_app"]
