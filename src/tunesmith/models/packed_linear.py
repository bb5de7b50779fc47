"""Frozen linear weights pre-packed for oneDNN, for the length of a block of no-grad passes on CPU.

bf16: PyTorch's CPU bf16 matrix product (oneDNN) reorders the weight into its blocked layout on every call.
For a decode step, where a product is a few rows against the whole weight, that reorder is a second
pass over the weight and costs as much as the product: measured on a 2-core Xeon with AMX, one thread,
a 576 x 1536 bf16 weight took 137 us per call at 8 rows through `F.linear` and 68 us pre-packed
(60 vs 130 us at 1 row, 142 vs 226 us at 64 rows, 1.2x at 1,000 rows), with bit-identical outputs at
every row count on one thread: the same kernel runs, only the reorder is done once. On two threads oneDNN
splits a few shapes' work differently once packed (576 x 576 at 300 and 1,000 rows), a bf16 rounding
difference like those a batch's shape already makes. Packed where the CPU's oneDNN has native bf16
(AVX-512 bf16 / AMX).

fp32: PyTorch multiplies fp32 through MKL's sgemm, which runs its best kernels on Intel CPUs only. On a
2-core AMD EPYC (Zen, AVX-512) it ran the default model's shapes at 160-180 GFLOP/s at 54 rows and ~220
from 512 rows up, with AVX-512 or AVX2 kernels alike, where oneDNN's packed fp32 product ran at 290-480 and
~510 (the vocabulary projection at 54 rows: 30.6 ms -> 7.6 ms); with oneDNN held to AVX2 it still ran
1.2-1.9x MKL's speed at 16-512 rows. A quickstart evaluation's generation (fp32, greedy, 180 replies) took
29.8 -> 17.0 s (a first version: 23.4 s with AVX2 kernels only, from 29.0), every reply token for token the same. The sums
run in another order, so logits differ in the last bits (the tests bound it). On Intel CPUs a previous
measurement found packed fp32 faster at some row counts and slower at others with AVX2 kernels, so fp32
is packed on AMD (and Hygon) CPUs only, where MKL's sgemm is what is slow.

Inductor does the same when it freezes a CPU graph (`mkldnn._reorder_linear_weight` / `_linear_pointwise`);
this applies it to the eager model, so generation keeps its dynamic shapes and no compilation. The packed
copy costs one more copy of the weights while the block runs (270 MB in bf16, 540 MB in fp32 for the default
model), so it is skipped when that would take more than a quarter of the free memory.

Sibling projections: a Llama-family attention multiplies one input by q, k and v in turn, an MLP by gate and up.
Packed side by side as one weight, they run as one product (the first sibling's call) whose columns the others
take: at one row a call's fixed cost is most of a small product's, so a decode step gains (2-core AMD EPYC,
two threads, best of 5: q+k+v 41 -> 20 us in bf16 and 50 -> 30 in fp32 at 1 row, 59 -> 36 / 82 -> 56 at 16
rows, 1.03-1.08x at 300; gate+up 1.16-1.26x at 1 row, even from 64 rows), with every output bit for bit what
the separate products give at each of those row counts. The siblings stay what they were to their callers
(peft and serving LoRA layers wrapping them call them with the same input); a sibling called with another
input than the first one's multiplies the whole fused weight for its own columns.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from pathlib import Path

import psutil
import torch
from torch import nn

from tunesmith.models.forward_swap import forwards_replaced

# Packed copies may take at most this share of the memory available when the block starts.
MEMORY_SHARE = 0.25


# Child names of linears that read the same input one after another (Llama, Mistral, Qwen2, SmolLM2 ...).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

# CPU makers whose fp32 products oneDNN runs faster than MKL's sgemm does (see above).
FP32_VENDORS = ("AuthenticAMD", "HygonGenuine")

# Modules whose forward multiplies with a packed weight inside a `packed_linears` block.
_packed_now: weakref.WeakSet = weakref.WeakSet()
# Frozen fp32 weights packed both ways inside a `packed_for_training` block: id -> (weight, its version, W, W^T).
_training_pairs: dict[int, tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = {}


@functools.cache
def _ops_available() -> bool:
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise"))


@functools.cache
def packing_available() -> bool:
    """Whether frozen bf16 weights are packed: the CPU's oneDNN has native bf16."""
    return _ops_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_vendor() -> str:
    """The CPU's vendor string from /proc/cpuinfo ("GenuineIntel", "AuthenticAMD", ...); "" where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def fp32_packing_pays() -> bool:
    """Whether frozen fp32 weights are packed: an x86 CPU on which MKL's sgemm is the slower product."""
    return _ops_available() and cpu_vendor() in FP32_VENDORS


def packs(dtype: torch.dtype) -> bool:
    """Whether frozen weights of `dtype` are packed on this CPU."""
    if dtype == torch.bfloat16:
        return packing_available()
    return dtype == torch.float32 and fp32_packing_pays()


def is_packed(module: nn.Module) -> bool:
    """Whether `module` multiplies with a packed weight now (inside a `packed_linears` block)."""
    return module in _packed_now


def pack(weight: torch.Tensor) -> torch.Tensor:
    """A bf16 or fp32 weight (out, in) -> its copy in oneDNN's blocked layout, for `packed_matmul`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) in the weight's dtype -> x @ weight.T (+ bias), (..., out), where packed = pack(weight).
    No autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [None], "")


def _takes_bf16(x: torch.Tensor) -> bool:
    """Whether a bf16 product under the current autocast takes `x` (not one that needs its gradient, and a bf16
    input or an fp32 one that autocast turns into bf16)."""
    if x.requires_grad and torch.is_grad_enabled():
        return False
    return x.dtype == torch.bfloat16 or (x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type)
                                         and torch.get_autocast_dtype(x.device.type) == torch.bfloat16)


def _takes_fp32(x: torch.Tensor) -> bool:
    """Whether an fp32 packed product gives what `F.linear` would: an fp32 input, no gradient wanted, no autocast
    (which would make the product bf16)."""
    return (x.dtype == torch.float32 and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.is_autocast_enabled(x.device.type))


def bf16_input(x: torch.Tensor) -> torch.Tensor | None:
    """`x` as a bf16 product under the current autocast would take it; None where a packed product does not
    apply (an input that needs its gradient, or a dtype autocast would not turn into bf16)."""
    return x.to(torch.bfloat16) if _takes_bf16(x) else None


def fp32_input(x: torch.Tensor) -> torch.Tensor | None:
    """`x` where an fp32 packed product gives what `F.linear` would (`_takes_fp32`); else None."""
    return x if _takes_fp32(x) else None


def _packable(module: nn.Module) -> bool:
    if type(module) is not nn.Linear:     # exactly Linear: not bnb 4-bit, not peft layers (their base_layer is)
        return False
    w, b = module.weight, module.bias
    return (packs(w.dtype) and w.device.type == "cpu" and not w.requires_grad
            and (b is None or (b.dtype == w.dtype and not b.requires_grad)))


def _packed_input(module: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    return bf16_input(x) if module.weight.dtype == torch.bfloat16 else fp32_input(x)


def _takes(module: nn.Linear, x: torch.Tensor) -> bool:
    """Whether `module`'s packed product takes `x`: `_packed_input` without making the bf16 copy."""
    return _takes_bf16(x) if module.weight.dtype == torch.bfloat16 else _takes_fp32(x)


def _packed_forward(module: nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    xp = _packed_input(module, x)
    if xp is None:
        # A gradient is wanted (no autograd through the packed op), or an input F.linear itself must judge
        # (without autocast a non-bf16 input is the caller's mismatch, reported as it always was).
        return nn.functional.linear(x, module.weight, module.bias)
    return packed_matmul(xp, packed, module.bias)


class Siblings:
    """Linears that read one input in turn, packed side by side: one product, each sibling its columns of it."""

    def __init__(self, members: list[nn.Linear]):
        self.members = members
        self.widths = [m.out_features for m in members]
        with torch.no_grad():
            self.packed = pack(torch.cat([m.weight for m in members]))
            biases = [m.bias for m in members]
            self.bias = None if biases[0] is None else torch.cat(biases).detach()
        # The last product per thread: (input, its version, the siblings' columns). A thread's passes run one at
        # a time, but two threads (a draft model's engine, a fallback) may run the same model.
        self.last = threading.local()

    def columns(self, index: int, x: torch.Tensor) -> torch.Tensor:
        last = self.last
        parts = getattr(last, "parts", None)
        if parts is None or last.x is not x or last.version != x._version:
            xp = _packed_input(self.members[index], x)
            parts = packed_matmul(xp, self.packed, self.bias).split(self.widths, dim=-1)   # views, (..., out_i)
            last.x, last.version, last.parts = x, x._version, parts
        if index == len(self.members) - 1:
            last.x = last.parts = None             # the input and its products are not held past the last sibling
        return parts[index]


def _sibling_forward(siblings: Siblings, index: int, x: torch.Tensor) -> torch.Tensor:
    module = siblings.members[index]
    if not _takes(module, x):      # a check only: the bf16 copy of x is made once, for the product (columns)
        return nn.functional.linear(x, module.weight, module.bias)
    return siblings.columns(index, x)


def _wrapped_linear(module: nn.Module | None) -> nn.Module | None:
    """The nn.Linear a child is, or wraps as peft's `base_layer` / the serving bank's `base`."""
    while module is not None and type(module) is not nn.Linear:
        inner = module._modules.get("base_layer")
        module = inner if inner is not None else module._modules.get("base")
    return module


def _sibling_groups(model: nn.Module, packable: list[nn.Linear]) -> list[list[nn.Linear]]:
    """Groups of SIBLINGS among `packable`, all of one dtype and input width, with biases all or none."""
    allowed = {id(m) for m in packable}
    groups = []
    for parent in model.modules():
        for names in SIBLINGS:
            members = [_wrapped_linear(parent._modules.get(n)) for n in names]
            if (all(m is not None and id(m) in allowed for m in members)
                    and len({(m.weight.dtype, m.in_features, m.bias is None) for m in members}) == 1):
                groups.append(members)
    return groups


def _fits(weights: list[torch.Tensor], copies: int) -> bool:
    """Whether `copies` packed copies of `weights` take at most MEMORY_SHARE of the memory available now."""
    need = copies * sum(w.numel() * w.element_size() for w in weights)
    return need <= MEMORY_SHARE * psutil.virtual_memory().available


@contextlib.contextmanager
def packed_linears(model: nn.Module):
    """Inside the block, every frozen nn.Linear of `model` on CPU whose dtype `packs` multiplies with a pre-packed
    copy of its weight, siblings (SIBLINGS) with one copy of theirs side by side (bf16: the same outputs, bit
    for bit on one thread; fp32: within rounding); outside it, the module is as it was."""
    modules = [m for m in model.modules() if _packable(m) and "forward" not in m.__dict__]
    if not _fits([m.weight for m in modules], 1):
        modules = []
    forwards = {}
    for group in _sibling_groups(model, modules):
        siblings = Siblings(group)
        forwards.update({id(m): functools.partial(_sibling_forward, siblings, i) for i, m in enumerate(group)})
    with torch.no_grad():
        for m in modules:
            if id(m) not in forwards:
                forwards[id(m)] = functools.partial(_packed_forward, m, pack(m.weight))
    with forwards_replaced([(m, forwards[id(m)]) for m in modules]):
        _packed_now.update(modules)
        try:
            yield
        finally:
            for m in modules:
                _packed_now.discard(m)


@contextlib.contextmanager
def packed_for_training(weights: list[torch.Tensor]):
    """Inside the block each of `weights` that is a frozen fp32 CPU matrix (out, in) has packed copies for
    x @ W^T and g @ W (`training_pair`), where fp32 packing pays (AMD CPUs): the products of a frozen base that a
    LoRA step runs forward and backward. Two more copies of those weights while the block runs."""
    eligible = [w for w in weights if w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 2
                and not w.requires_grad] if fp32_packing_pays() else []
    if not _fits(eligible, 2):
        eligible = []
    with torch.no_grad():
        pairs = {id(w): (w, w._version, pack(w), pack(w.t().contiguous())) for w in eligible}
    _training_pairs.update(pairs)
    try:
        yield len(pairs)
    finally:
        for key in pairs:
            _training_pairs.pop(key, None)


def training_pair(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(packed W, packed W^T) of `weight` inside a `packed_for_training` block, None where it has none or it changed
    in place since it was packed (a method that updates the frozen base, as Delta-LoRA does)."""
    entry = _training_pairs.get(id(weight))
    if entry is None or entry[0] is not weight or weight._version != entry[1] or weight.dtype != torch.float32:
        return None
    return entry[2], entry[3]
