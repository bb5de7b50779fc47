"""Attention for packed rows that computes only what the block-diagonal mask would keep.

A packed row holds several examples whose `position_ids` restart at 0. The stock path turns that
into a (T x T) block-diagonal mask and runs masked attention over the whole row; on CPU that
costs O(T^2) per row and, worse, a slow masked backward. Here each example (segment) runs its own
causal SDPA, so attention costs sum(len_i^2), uses the fast unmasked causal kernels, and padding
never mixes with real tokens. The result is identical (checked by the packed-vs-alone test).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

NAME = "tunesmith_packed"


def _segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, [start, end) of each run of positions that starts at 0."""
    out = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     position_ids=None, **kwargs):
    """query (B, H, T, D), key/value (B, Hkv, T, D) -> (B, T, H, D), None."""
    if position_ids is None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    out = torch.empty_like(query)
    gqa = key.shape[1] != query.shape[1]
    for b, segments in enumerate(_segments(position_ids)):
        for s, e in segments:
            out[b:b + 1, :, s:e] = F.scaled_dot_product_attention(
                query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                is_causal=True, dropout_p=dropout, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    return None


def register() -> None:
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, _no_mask)


def supports(model) -> bool:
    config = getattr(model, "config", None)
    return config is not None and getattr(config, "_attn_implementation", None) in ("sdpa", "eager", NAME)


@contextlib.contextmanager
def packed_attention_for(model):
    """Switch `model` (a transformers model, possibly inside peft) to packed attention for the block."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not supports(inner):
        yield
        return
    register()
    configs = [m.config for m in inner.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    before = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = NAME
    try:
        yield
    finally:
        for c, old in zip(configs, before):
            c._attn_implementation = old
