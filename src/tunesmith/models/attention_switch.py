"""An attention implementation switched on for the length of a block: training's packed attention
(train/attention.py) and generation's grouped SDPA (generation/attention.py). transformers reads
`config._attn_implementation` on every forward, so setting it around a call is enough, and putting the
old value back leaves the model as the caller had it."""

from __future__ import annotations

import contextlib
from collections.abc import Container


def attention_configs(model) -> list:
    """The distinct configs inside `model` (a peft wrapper or not) that name an attention implementation."""
    found = {id(m.config): m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}
    return list(found.values())


@contextlib.contextmanager
def attention_switched(configs: list, name: str, replace: Container[str]):
    """Inside the block, each of `configs` whose implementation is in `replace` uses `name` (registered by
    the caller); each gets its own value back after."""
    switched = [(c, c._attn_implementation) for c in configs if c._attn_implementation in replace]
    for c, _ in switched:
        c._attn_implementation = name
    try:
        yield
    finally:
        for c, old in switched:
            c._attn_implementation = old
