"""Attention for packed rows: each example attends only to itself, at the cost of its own length.

A packed row holds several examples whose `position_ids` restart at 0. Two exact ways to keep them
apart, chosen per forward by a cost estimate (`_plan`): one SDPA call over the whole batch with the
block-diagonal causal mask built from `position_ids` (cheap when rows are short: one dispatch), or
one causal SDPA call per example (cheap when rows are long: sum(len^2) instead of T^2). Rows that
hold a single example take the unmasked causal kernel. Padding forms its own segment, so it never
mixes with real tokens. Both paths equal transformers' masked attention (tests/test_train_loss.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

NAME = "tunesmith_packed"


# One SDPA call has a fixed cost (dispatch, layout, the backward's bookkeeping) that on this CPU equals
# about 75k query-key pairs of masked attention; used to choose between one masked call over the whole
# batch (cost ~ B*T^2) and one causal call per example (cost ~ sum(len^2) + calls * overhead).
CALL_OVERHEAD_PAIRS = 75_000
_PLAN: list = []  # [position_ids, plan] of the latest forward (holding the tensor keeps `is` meaningful)


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, [start, end) of each run of positions that starts at 0."""
    out = []
    for row in position_ids.tolist():
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool mask: causal within each run of positions starting at 0."""
    segment = (position_ids == 0).cumsum(dim=1)
    same = segment[:, :, None] == segment[:, None, :]
    T = position_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril_()
    return (same & causal)[:, None]


def _plan(position_ids: torch.Tensor):
    """("causal", None) for unpacked rows, ("masked", mask) or ("segments", bounds), whichever is cheaper."""
    bounds = segment_bounds(position_ids)
    if all(len(row) == 1 for row in bounds):
        return "causal", None
    B, T = position_ids.shape
    per_segment = sum((e - s) ** 2 + CALL_OVERHEAD_PAIRS for row in bounds for s, e in row)
    if B * T * T <= per_segment:
        return "masked", block_causal_mask(position_ids)
    return "segments", bounds


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     position_ids=None, **kwargs):
    """query (B, H, T, D), key/value (B, Hkv, T, D) -> (B, T, H, D), None."""
    if position_ids is None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = key.shape[1] != query.shape[1]
    # Every layer gets the same position_ids tensor: plan once per forward, not once per layer.
    if not _PLAN or _PLAN[0] is not position_ids:
        _PLAN[:] = [position_ids, _plan(position_ids)]
    kind, arg = _PLAN[1]
    if kind != "segments":
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=arg, is_causal=kind == "causal",
                                             dropout_p=dropout, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    out = torch.empty_like(query)
    for b, segments in enumerate(arg):
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
