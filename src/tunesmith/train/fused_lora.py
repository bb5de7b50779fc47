"""Plain LoRA linear layers trained through one autograd function instead of peft's op chain.

peft computes an adapted layer as `base(x) + lora_B(lora_A(dropout(x))) * scaling`, plus, under
autocast, a cast of x to the adapter weights' fp32 and back. On a CPU each of those is a pass over
a (tokens x features) tensor: the scaling multiply and the add in forward, their gradients, and two
activation-sized dtype copies per layer in each direction. On the default model they cost more
than the rank-16 matrix products themselves (bf16 step: dtype copies alone were 20 % of it).

`LoRALinearFunction` does the same maths with matrix products only,

    forward    h = x A^T                       (n, r)
               y = x W^T + h (sB)^T            one addmm into the base output
    backward   gh = g (sB)                     (n, r)
               dA = gh^T x     d(B) = s g^T h
               dx = g W + gh A                 one addmm

where s = alpha / r. It computes in autocast's dtype when autocast is on (as peft's layers do,
whose matmuls autocast casts to bf16 anyway), else in x's dtype; A and B keep fp32 gradients. In fp32 on
AMD CPUs the two products with the frozen W (x W^T, g W) use copies of W packed for oneDNN, twice MKL's
speed there (models/packed_linear.py).
`fused_lora(model)` routes each eligible peft layer through it for the length of a block; a layer
in any other state (adapters disabled or merged, several adapters active, DoRA or another variant,
dropout on, a bias on lora_B, a mixed-adapter batch, a base that is not a plain nn.Linear) keeps peft's
forward.
"""

from __future__ import annotations

import contextlib
import types

import torch
from torch import nn

from tunesmith.models import packed_linear
from tunesmith.models.forward_swap import forwards_replaced


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dtype: torch.dtype):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(dtype)                # (n, in)
        w = weight.to(dtype)                                   # (out, in); a no-op once frozen_linears_in cast it
        a = lora_a.to(dtype)                                   # (r, in)
        sb = (lora_b * scaling).to(dtype)                      # (out, r)
        h = x2 @ a.t()                                         # (n, r)
        pair = packed_linear.training_pair(weight) if dtype == torch.float32 else None
        if pair is not None:
            y = packed_linear.packed_matmul(x2, pair[0], None if bias is None else bias.to(dtype))   # (n, out)
        else:
            y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())   # (n, out)
        y.addmm_(h, sb.t())
        ctx.save_for_backward(x2, h, w, a, sb)
        ctx.packed_wt = pair[1] if pair is not None else None
        ctx.scaling, ctx.x_dtype = scaling, x.dtype
        ctx.lora_dtypes = (lora_a.dtype, lora_b.dtype)
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, h, w, a, sb = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(x2.dtype)     # (n, out)
        gh = g @ sb                                            # (n, r)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            gw = g @ w if ctx.packed_wt is None else packed_linear.packed_matmul(g, ctx.packed_wt)
            gx = gw.addmm_(gh, a)                              # (n, in)
            grad_x = gx.view(*grad.shape[:-1], gx.shape[-1]).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            grad_a = (gh.t() @ x2).to(ctx.lora_dtypes[0])     # (r, in)
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ h).to(torch.float32).mul_(ctx.scaling).to(ctx.lora_dtypes[1])   # (out, r)
        return grad_x, None, None, grad_a, grad_b, None, None


class FrozenLinearFunction(torch.autograd.Function):
    """x W^T (+ b) for a frozen W through its packed copies (packed_linear.training_pair): an adapted layer with
    its adapters off, as DPO's reference runs it. The same product as LoRALinearFunction's base term, so at step 0
    (B = 0) the policy and the reference agree bit for bit, as they do through MKL elsewhere."""

    @staticmethod
    def forward(ctx, x, bias, packed_w, packed_wt):
        shape = x.shape
        ctx.packed_wt = packed_wt
        y = packed_linear.packed_matmul(x.reshape(-1, shape[-1]), packed_w, bias)     # (n, out)
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        g = grad.reshape(-1, grad.shape[-1])                                          # (n, out)
        gx = packed_linear.packed_matmul(g.contiguous(), ctx.packed_wt)               # (n, in)
        return gx.view(*grad.shape[:-1], gx.shape[-1]), None, None, None


def _packed_base_only(layer, x, args, kwargs) -> torch.Tensor | None:
    """The base product of a layer whose adapters are off, through the packed copies where the layer's fused
    forward would use them (fp32, no autocast); None otherwise."""
    if args or kwargs or not layer.disable_adapters or layer.merged or x.dtype != torch.float32 \
            or torch.is_autocast_enabled(x.device.type):
        return None
    base = layer.base_layer
    pair = packed_linear.training_pair(base.weight)
    if pair is None or (base.bias is not None and base.bias.dtype != torch.float32):
        return None
    return FrozenLinearFunction.apply(x, base.bias, *pair)


def _fusable(layer, x, kwargs) -> str | None:
    """The active adapter's name when `layer` is in the plain state the function computes, else None."""
    if kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}) or layer.lora_B[name].bias is not None:
        return None
    if not isinstance(layer.lora_dropout[name], nn.Identity) or not x.is_floating_point():
        return None
    return name


# Eager even inside torch.compile: traced by dynamo, this function corrupted memory in fp32 (torch 2.13,
# dynamic shapes; docs/training.md, "Compiling the decoder layers").
@torch.compiler.disable
def _forward(self, x, *args, **kwargs):
    name = _fusable(self, x, kwargs) if not args else None
    if name is None:
        off = _packed_base_only(self, x, args, kwargs)
        return self._peft_forward(x, *args, **kwargs) if off is None else off
    base = self.base_layer
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    with torch.autocast(device, enabled=False):
        return LoRALinearFunction.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                        self.lora_B[name].weight, float(self.scaling[name]), dtype)


def _eligible(module) -> bool:
    from peft.tuners.lora import Linear as LoraLinear
    return (type(module) is LoraLinear and type(module.base_layer) is nn.Linear
            and not module.base_layer.weight.requires_grad
            and (module.base_layer.bias is None or not module.base_layer.bias.requires_grad))


@contextlib.contextmanager
def fused_lora(model: nn.Module):
    """Inside the block, plain LoRA linear layers of `model` compute through `LoRALinearFunction` (their frozen
    fp32 base weights packed where that pays)."""
    patched = [m for m in model.modules() if _eligible(m)]
    for m in patched:
        m._peft_forward = m.forward
    try:
        with forwards_replaced([(m, types.MethodType(_forward, m)) for m in patched]), \
                packed_linear.packed_for_training([m.base_layer.weight for m in patched]):
            yield len(patched)
    finally:
        for m in patched:
            del m._peft_forward
