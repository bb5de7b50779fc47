"""Frozen base weights held in the autocast dtype for the length of a training run or a generation call.

Under autocast every linear layer casts its fp32 weight to bf16/fp16 on every forward; autocast's
cast cache only covers weights that require grad, so a frozen base (LoRA and friends) is re-cast
on every micro-batch. Casting once up front gives the same bf16 values (the same rounding), so the
math is unchanged, and it removes the copies (about 10 % of a LoRA step on CPU). The fp32 tensors
are kept and put back on exit: evaluation, merging and saving after training see the fp32 base.
Generation, serving and scoring in bf16 use the same block through `inference_precision`, where autocast
would cast every weight per decode step or batch.
"""

from __future__ import annotations

import contextlib

import torch

from tunesmith.models.packed_linear import packed_linears


def _embedding_weight(model):
    module = getattr(model, "get_input_embeddings", lambda: None)()
    return getattr(module, "weight", None) if module is not None else None


@contextlib.contextmanager
def frozen_linears_in(model: torch.nn.Module, dtype: torch.dtype | None, restore: bool = True):
    """Cast frozen fp32 nn.Linear weights (and biases) to `dtype` inside the block; restore them after.
    restore=False keeps no fp32 copy (and gives none back): for a model that runs no other way again."""
    if dtype is None:
        yield
        return
    # The embedding weight is left alone: the lookup is not autocast, so a cast would change the math.
    embedding = _embedding_weight(model)
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    for module in model.modules():
        if type(module) is not torch.nn.Linear:  # exactly Linear: not bnb 4-bit, not peft layers
            continue
        for param in (module.weight, module.bias):
            if param is None or param.requires_grad or param.dtype != torch.float32 or param is embedding:
                continue
            if restore:
                originals.append((param, param.data))
            param.data = param.data.to(dtype)
    # A head tied to the embedding (SmolLM2's) is untied for the block: it gets its own cast copy, the
    # lookup keeps the fp32 matrix. Otherwise autocast casts the 49k x 576 matrix in every forward
    # (every micro-batch in training, every decode step in generation).
    head = getattr(model, "get_output_embeddings", lambda: None)()
    tied = None
    if (type(head) is torch.nn.Linear and embedding is not None and head.weight is embedding
            and not embedding.requires_grad and embedding.dtype == torch.float32):
        tied = head.weight
        head.weight = torch.nn.Parameter(tied.detach().to(dtype), requires_grad=False)
    try:
        yield
    finally:
        for param, data in originals:
            param.data = data
        if tied is not None and restore:
            head.weight = tied


@contextlib.contextmanager
def frozen(model: torch.nn.Module, restore: bool = True):
    """Every parameter of `model` frozen inside the block. For blocks of no-grad passes only: a model loaded
    for evaluation, judging or serving has requires_grad on, and the blocks below leave any weight that
    trains as it is (not cast, not packed), so such a model would run without them."""
    thawed = [p for p in model.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        if restore:
            for p in thawed:
                p.requires_grad_(True)


@contextlib.contextmanager
def weights_held(model: torch.nn.Module, precision: str, restore: bool = True):
    """The weights' side of `inference_precision`, without autocast (which belongs to one thread), for no-grad
    passes (the parameters are frozen for the block): at "bf16" the linear weights held in bf16; bf16 weights
    (these, or a model loaded in bf16) and, on AMD CPUs, fp32 ones multiply pre-packed where the CPU allows it
    (models/packed_linear.py: faster; bf16 the same outputs on one thread, fp32 within rounding).
    The serving engine's fallback models (private copies of the base) are held this way for as long as they
    are loaded, with restore=False: their fp32 linear weights are dropped, not kept beside the bf16 ones."""
    with frozen(model, restore), frozen_linears_in(model, torch.bfloat16 if precision == "bf16" else None, restore), \
            packed_linears(model):
        yield


@contextlib.contextmanager
def inference_precision(model: torch.nn.Module, precision: str):
    """No-grad passes of `model` inside the block at `precision`: "bf16" autocasts to bf16 with the frozen
    linear weights held in bf16 for the block (the rounding autocast applies per pass, done once); any other
    precision runs as the weights are, under whatever autocast the caller set. Either way `weights_held`."""
    autocast = (torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with weights_held(model, precision), autocast:
        yield
