"""Frozen base weights held in the autocast dtype for the length of a training run.

Under autocast every linear layer casts its fp32 weight to bf16/fp16 on every forward; autocast's
cast cache only covers weights that require grad, so a frozen base (LoRA and friends) is re-cast
on every micro-batch. Casting once up front gives the same bf16 values (the same rounding), so the
math is unchanged, and it removes the copies (about 10 % of a LoRA step on CPU). The fp32 tensors
are kept and put back on exit: evaluation, merging and saving after training see the fp32 base.
"""

from __future__ import annotations

import contextlib

import torch


def _tied_ids(model) -> set[int]:
    ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            ids.add(id(module.weight))
    return ids


@contextlib.contextmanager
def frozen_linears_in(model: torch.nn.Module, dtype: torch.dtype | None):
    """Cast frozen fp32 nn.Linear weights (and biases) to `dtype` inside the block; restore them after."""
    if dtype is None:
        yield
        return
    # Embedding weights are left alone: the lookup is not autocast, so a cast would change the math.
    skip = _tied_ids(model)
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    for module in model.modules():
        if type(module) is not torch.nn.Linear:  # exactly Linear: not bnb 4-bit, not peft layers
            continue
        for param in (module.weight, module.bias):
            if param is None or param.requires_grad or param.dtype != torch.float32 or id(param) in skip:
                continue
            originals.append((param, param.data))
            param.data = param.data.to(dtype)
    try:
        yield
    finally:
        for param, data in originals:
            param.data = data
