"""What each method would train on a given model, without loading its weights.

The model is built on the meta device from its config (shapes, no memory), each method prepares
it with its default keys, and the trainable / added parameters are counted. The memory estimate
is weights + gradients + AdamW state, all fp32 (a 4-bit base counts its quantized linear layers
at 4.127 bits: NF4 plus double-quantized block constants); activations are excluded, since they
depend on batch and sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.methods.registry import METHODS, Method, method_options
from tunesmith.methods.targets import decoder_linears

NF4_BITS = 4.127
FP32 = 4
GRAD_AND_ADAM = 3 * FP32      # gradient + AdamW first and second moments, per trainable value


@dataclass
class MethodFootprint:
    name: str
    trainable: int
    base_params: int
    memory_bytes: int
    mergeable: bool
    gguf_exportable: bool
    summary: str

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / max(1, self.base_params)


def meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_size(model) -> int:
    """Parameters plus matrix buffers (VeRA keeps its shared random projections as buffers)."""
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers() if b.dim() == 2)


def base_weight_bytes(model, method: Method) -> float:
    total = sum(p.numel() for p in model.parameters()) * FP32
    if method.base_bits:
        linear = sum(m.weight.numel() for _, m in decoder_linears(model))
        total -= linear * (FP32 - NF4_BITS / 8)
    return total


def footprint(config, method: Method) -> MethodFootprint:
    model = meta_model(config)
    base_size = model_size(model)
    weights = base_weight_bytes(model, method)
    prepared = method.prepare(model, method_options(name=method.name), lr=1e-4)
    added = model_size(prepared.model) - base_size
    trainable = prepared.trainable_parameters()
    memory = weights + added * FP32 + trainable * GRAD_AND_ADAM
    base_params = sum(p.numel() for p in meta_model(config).parameters())
    return MethodFootprint(method.name, trainable, base_params, int(memory), method.mergeable,
                           method.gguf_exportable, method.summary)


def inventory(base: str = "default") -> list[MethodFootprint]:
    from transformers import AutoConfig

    from tunesmith.models import resolve_base

    config = AutoConfig.from_pretrained(str(resolve_base(base).path))
    return [footprint(config, m) for m in METHODS.values()]
