"""Frozen bf16 linear weights pre-packed for oneDNN, for the length of a block of no-grad passes on CPU.

PyTorch's CPU bf16 matrix product (oneDNN) reorders the weight into its blocked layout on every call.
For a decode step, where a product is a few rows against the whole weight, that reorder is a second
pass over the weight and costs as much as the product: measured on a 2-core Xeon with AMX, one thread,
a 576 x 1536 bf16 weight took 137 us per call at 8 rows through `F.linear` and 68 us pre-packed
(60 vs 130 us at 1 row, 142 vs 226 us at 64 rows, 1.2x at 1,000 rows), with bit-identical outputs at
every row count on one thread: the same kernel runs, only the reorder is done once. On two threads oneDNN
splits a few shapes' work differently once packed (576 x 576 at 300 and 1,000 rows), a bf16 rounding
difference like those a batch's shape already makes. Inductor does the same when it
freezes a CPU graph (`mkldnn._reorder_linear_weight` / `_linear_pointwise`); this applies it to the
eager model, so generation keeps its dynamic shapes and no compilation.

Only where it gives the same numbers and pays: bf16 weights that do not train, on a CPU whose oneDNN
has native bf16 (AVX-512 bf16 / AMX). fp32 is left alone: the pre-transposed or pre-packed fp32
products measured faster on AVX-512 at some row counts but not on AVX2, and changed the sums' order.
The packed copy costs one more bf16 copy of the weights while the block runs (270 MB for the default
model), so it is skipped when that would take more than a quarter of the free memory.
"""

from __future__ import annotations

import contextlib
import functools

import psutil
import torch
from torch import nn

from tunesmith.models.forward_swap import forwards_replaced

# Packed copies may take at most this share of the memory available when the block starts.
MEMORY_SHARE = 0.25


@functools.cache
def packing_available() -> bool:
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise") and bool(mkldnn._is_mkldnn_bf16_supported()))


def pack(weight: torch.Tensor) -> torch.Tensor:
    """A bf16 weight (out, in) -> its copy in oneDNN's blocked layout, for `packed_matmul`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) in bf16 -> x @ weight.T (+ bias), (..., out), where packed = pack(weight). No autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [None], "")


def bf16_input(x: torch.Tensor) -> torch.Tensor | None:
    """`x` as a bf16 product under the current autocast would take it; None where a packed product does not
    apply (an input that needs its gradient, or a dtype autocast would not turn into bf16)."""
    if x.requires_grad and torch.is_grad_enabled():
        return None
    if x.dtype == torch.bfloat16:
        return x
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type) \
            and torch.get_autocast_dtype(x.device.type) == torch.bfloat16:
        return x.to(torch.bfloat16)
    return None


def _packable(module: nn.Module) -> bool:
    if type(module) is not nn.Linear:     # exactly Linear: not bnb 4-bit, not peft layers (their base_layer is)
        return False
    w, b = module.weight, module.bias
    return (w.dtype == torch.bfloat16 and w.device.type == "cpu" and not w.requires_grad
            and (b is None or (b.dtype == torch.bfloat16 and not b.requires_grad)))


def _packed_forward(module: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    xb = bf16_input(x)
    if xb is None:
        # A gradient is wanted (no autograd through the packed op), or an input F.linear itself must judge
        # (without autocast a non-bf16 input is the caller's mismatch, reported as it always was).
        return nn.functional.linear(x, module.weight, module.bias)
    return packed_matmul(xb, packed, module.bias)


@contextlib.contextmanager
def packed_linears(model: nn.Module):
    """Inside the block, every frozen bf16 nn.Linear of `model` on CPU multiplies with a pre-packed copy of
    its weight (same outputs, bit for bit on one thread); outside it, the module is as it was."""
    modules = [m for m in model.modules() if _packable(m) and "forward" not in m.__dict__] if packing_available() else []
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in modules)
    if weight_bytes > MEMORY_SHARE * psutil.virtual_memory().available:
        modules = []
    with torch.no_grad():
        packs = {id(m): pack(m.weight) for m in modules}
    with forwards_replaced([(m, functools.partial(_packed_forward, m, packs[id(m)])) for m in modules]):
        yield
