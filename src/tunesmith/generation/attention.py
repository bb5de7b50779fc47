"""SDPA for generation on CPU, with grouped-query attention kept grouped under a padding mask.

transformers' SDPA attention repeats every key/value head for its query heads (`repeat_kv`, a copy
of the whole cache) whenever a mask is given and more than one query position is fed: CUDA's kernels
fall back to the slow path for a masked GQA call. PyTorch's CPU kernel takes `enable_gqa` with a mask
at full speed, with the same results (bit for bit where we measured; tested to 1e-6). The engine's prefills always carry a mask (left
padding), so on CPU they paid for that copy: for SmolLM2 (9 query heads over 3 key/value heads) a
48-row prefill after a ~310-token shared prefix spent 25 ms a layer in fp32 with the copy and 6.6
without (8.5 and 4.3 ms in bf16).

A decode step (one query position) over half-precision keys and values always folds each key/value head's
query heads into rows of one query (transformers' `pack_gqa`, which transformers uses only when a mask is
given): without a mask (batch 1, or rows without padding) transformers passes `enable_gqa`, and PyTorch's CPU
kernel runs that 2.5-6x slower in bf16 (2-core AMD EPYC with AVX-512 bf16, 9 query heads over 3 key/value
heads: 50 against 19 us a call at 100 keys, 447 against 72 at 1,000, 296 against 59 at 4 rows of 200; 30
calls a step of the default model). In fp32 the two run alike, and transformers' choice stands. Everything else
goes to transformers' own function unchanged.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from tunesmith.models.attention_switch import attention_switched

NAME = "tunesmith_gqa_sdpa"
HALF = (torch.bfloat16, torch.float16)


def gqa_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """query (B, Hq, S, D), key/value (B, Hkv, T, D), mask (B, 1, S, T) -> ((B, S, Hq, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Grouped-query attention on CPU, with nothing but a mask added to the scores: the cases handled here.
    ours = (query.device.type == "cpu" and key.shape[1] != query.shape[1] and not kwargs.get("output_attentions")
            and all(kwargs.get(k) is None for k in ("position_bias", "s_aux", "softcap", "sliding_window")))
    one_query = query.shape[2] == 1
    if ours and one_query and key.dtype in HALF and (attention_mask is None or attention_mask.shape[1] == 1):
        return packed_decode_attention(query, key, value, attention_mask, dropout, scaling), None   # a shared mask
    if not ours or one_query or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def packed_decode_attention(query, key, value, attention_mask, dropout: float, scaling) -> torch.Tensor:
    """query (B, Hq, 1, D), key/value (B, Hkv, T, D), mask (B, 1, 1, T) or None -> (B, 1, Hq, D): each key/value
    head's query heads as the rows of one query (head h reads key/value head h // (Hq / Hkv), as `repeat_kv` has it)."""
    b, heads, _, dim = query.shape
    packed = query.reshape(b, key.shape[1], heads // key.shape[1], dim)                  # (B, Hkv, G, D)
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling)
    return out.reshape(b, heads, 1, dim).transpose(1, 2).contiguous()


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(NAME, gqa_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def grouped_sdpa(configs: list):
    """Inside the block, the configs of `configs` (from `attention_configs`) that use SDPA use `gqa_sdpa`.
    It computes what SDPA computes, so a thread that sees the switch half-way gets the same numbers."""
    if any(c._attn_implementation == "sdpa" for c in configs):
        _register()
    with attention_switched(configs, NAME, ("sdpa",)):
        yield
