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

_CAST_COPIES: dict[int, torch.Tensor] = {}   # id(frozen embedding / head weight) -> its autocast-dtype copy


def _tied_params(model) -> list[torch.nn.Parameter]:
    params = {}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            params[id(module.weight)] = module.weight
    return list(params.values())


def _tied_ids(model) -> set[int]:
    return {id(p) for p in _tied_params(model)}


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
    # A tied output head (SmolLM2's lm_head is the embedding matrix) keeps its fp32 weight for the
    # lookup; its cast for the loss's head matmul is made once here instead of once per micro-batch.
    heads = [p for p in _tied_params(model) if not p.requires_grad and p.dtype == torch.float32]
    for param in heads:
        _CAST_COPIES[id(param)] = param.detach().to(dtype)
    try:
        yield
    finally:
        for param, data in originals:
            param.data = data
        for param in heads:
            _CAST_COPIES.pop(id(param), None)


def weight_in(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` detached and in `dtype`: the copy `frozen_linears_in` holds for a tied head, else a fresh cast."""
    cached = _CAST_COPIES.get(id(weight))
    if cached is not None and cached.dtype == dtype:
        return cached
    return weight.detach().to(dtype)
