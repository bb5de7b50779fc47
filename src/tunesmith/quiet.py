"""Library output a tunesmith user can do nothing about, kept out of what they read.

Each entry names a message a dependency prints from its own internals (there is no call of ours to
update): peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model,
peft's own prefix-tuning forward passes `past_key_values`, bitsandbytes on AVX-512-bf16 CPUs looks
for a kernel on the Hugging Face hub when imported (the CLI runs offline, so it only finds the cache
empty, and says so twice), DeepSpeed announces on import that it found no GPU. The CLI installs all of it once (`quiet_cli`); library code that triggers one
of them wraps the call in `foreign_warnings_ignored`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

# (category, regex on the message start) of warnings raised inside dependencies.
FOREIGN_WARNINGS = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (FutureWarning, r".*`past_key_values`.*renamed"),
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
]

# logger name -> message start of log lines that only say an optional download was not made.
FOREIGN_LOG_LINES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/",
    # DeepSpeed, imported by transformers / accelerate on a CPU-only machine, says it found no GPU.
    "DeepSpeed": "Setting accelerator to CPU",
}


def _ignore_foreign_warnings() -> None:
    for category, message in FOREIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


@contextlib.contextmanager
def foreign_warnings_ignored():
    with warnings.catch_warnings():
        _ignore_foreign_warnings()
        yield


class _DropLines(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_cli() -> None:
    """Once, at CLI start: the filters above, and no per-tensor weight-loading bars from transformers
    (a 135M model loads in under a second; our own lines say what was loaded). Set
    HF_HUB_DISABLE_PROGRESS_BARS=0 to get them back.

    And the Hugging Face hub offline: tunesmith never downloads at run time (the default model is a
    package, other models are folders or already in the cache, which offline mode still reads), and
    without it a dependency asks the hub on import (bitsandbytes' kernel lookup, on AVX-512 bf16 CPUs).
    HF_HUB_OFFLINE=0 lets transformers download again."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _ignore_foreign_warnings()
    for name, prefix in FOREIGN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):  # main() may run many times in one process
            logger.addFilter(_DropLines(prefix))
