"""How many rows of KV cache fit in memory: offline generation caps its batch by it.

A CPU decode step reads every weight once whatever the number of rows, so offline work decodes many
rows together (`eval.batch_size`, 64 by default). But each row keeps the keys and values of every layer
for its whole prompt and reply: 46 KB a token for the default model in fp32 (64 rows of 1,000 tokens:
3 GB), 393 KB a token for a 1.7B model without grouped-query attention (25 GB for the same rows). The
batch is cut to the rows whose cache fits `MEMORY_SHARE` of the memory free when generation starts;
rows beyond it wait their turn, so replies are the same, only later.
"""

from __future__ import annotations

import psutil
import torch

MEMORY_SHARE = 0.5


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token takes in `model`'s cache (all layers), at its weights' precision."""
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", 1) or 1
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    dtype = next(model.parameters()).dtype
    return cfg.num_hidden_layers * 2 * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def rows_that_fit(model, tokens_per_row: int, free_bytes: int | None = None) -> int:
    """Rows of `tokens_per_row` tokens whose KV cache fits MEMORY_SHARE of `free_bytes` (default: the
    memory available now); at least 1."""
    free = psutil.virtual_memory().available if free_bytes is None else free_bytes
    return max(1, int(free * MEMORY_SHARE) // max(1, tokens_per_row * kv_bytes_per_token(model)))
