"""Finding the layers a method adapts, by the same names peft uses ('all-linear' or short names)."""

from __future__ import annotations

import re

import torch

from tunesmith.errors import ConfigError

_IN_LAYER = re.compile(r"\.(\d+)\.")  # "model.layers.3.mlp.up_proj": inside a numbered decoder block


def decoder_linears(model, target_modules: str | list[str] = "all-linear") -> list[tuple[str, torch.nn.Linear]]:
    """(qualified name, module) of the decoder-block linear layers matching `target_modules`.

    'all-linear' follows peft: every nn.Linear inside the decoder blocks, never the output head.
    """
    wanted = None if target_modules == "all-linear" else \
        {target_modules} if isinstance(target_modules, str) else set(target_modules)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not _IN_LAYER.search(name):
            continue
        if wanted is None or name.rsplit(".", 1)[-1] in wanted:
            found.append((name, module))
    if not found:
        raise ConfigError(f"method.target_modules: no linear layer of this model matches {target_modules!r}",
                          hint="use 'all-linear' or short names such as [q_proj, v_proj]")
    return found


def module_type(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj' (the same matrix in every layer)."""
    return _IN_LAYER.split(name, maxsplit=1)[-1]


def layer_index(name: str) -> int:
    m = _IN_LAYER.search(name)
    return int(m.group(1)) if m else -1
