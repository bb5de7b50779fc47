"""Attention as two matrix products around a softmax, for short sequences in bf16 training on CPU.

PyTorch's CPU flash-attention kernel walks the query and key blocks with an online softmax; at the
lengths most fine-tuning examples have, its fixed per-block work dominates. Forward + backward of one
SmolLM2 layer (9 query heads over 3 key/value heads, bf16, ~1,000 tokens per call; 2-core AMD EPYC with
AVX-512 bf16, glibc keeping freed memory as allocator.py sets it, best of 12): 7 rows x 128 tokens 10.9 ms
through SDPA, 2.9 ms here; 4 x 227 11.2 -> 5.4; 3 x 320 14.8 -> 8.1; 1 x 512 12.6 -> 6.9. In fp32 (AVX2
kernels) it is not faster (1.0-1.2x slower at 128-512 tokens), so it runs only in bf16:

    forward    s = (q k^T) * scale            fp32 (bf16 q and k upcast: the scores are not rounded to bf16)
               p = softmax(s + mask)           fp32, then rounded to bf16, as SDPA's bf16 kernel does
               o = p v                          bf16 product
    backward   dv = p^T do      dp = do v^T     bf16 products
               ds = p * (dp - rowsum(do * o)) * scale          fp32, rounded to bf16
               dq = ds k        dk = ds^T q

Grouped-query attention stays grouped: the G query heads that share a key/value head are stacked
along the query axis, (B, Hkv, G*L, D), so keys and values are never repeated.

What it costs: the (B, H, L, L) bf16 probabilities are kept for the backward where SDPA keeps one number
per query (9 KB per token per layer for SmolLM2 at 512 tokens, growing with the length). `train.attention`
uses it only for calls of at most MAX_LEN tokens, and a batch whose fp32 scores would exceed 32 MB runs in
groups of rows (8 x 512 tokens in one call: 122 ms, slower than SDPA's 95; in three groups 57 ms).
"""

from __future__ import annotations

import functools

import torch

from tunesmith.allocator import MMAP_THRESHOLD_BYTES

# Longest call (query = key length) computed here; longer ones go to SDPA, whose memory does not grow with
# the square of the length. At 640 tokens this was still 1.6x faster; at 1,024 no faster (31 ms each: a
# 38 MB fp32 score tensor is above glibc's largest mmap threshold, so fresh pages on every call).
MAX_LEN = 512
# Most score elements one call computes: fp32 scores up to glibc's largest mmap threshold (32 MB), above
# which they are fresh pages on every call; a batch with more goes in groups of rows.
MAX_SCORES = MMAP_THRESHOLD_BYTES // 4


def applies(query: torch.Tensor, dropout: float) -> bool:
    """Whether a call with this (B, H, L, D) query runs here: bf16 (by dtype or CPU autocast), on CPU, no
    dropout, at most MAX_LEN tokens."""
    if query.device.type != "cpu" or dropout or query.shape[2] > MAX_LEN:
        return False
    if query.dtype == torch.bfloat16:
        return True
    return (query.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None,
                     scale: float | None = None, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """query (B, H, L, D), key/value (B, Hkv, L, D) with H a multiple of Hkv; mask (B, 1, L, L) bool, True
    where a query may attend (None: causal) -> (B, H, L, D) in `dtype`. Every query must see at least one key."""
    B, H, L, D = query.shape
    Hkv = key.shape[1]
    scale = D ** -0.5 if scale is None else scale
    rows = max(1, MAX_SCORES // (H * L * L))
    if B > rows:
        # Rows in groups whose fp32 scores stay under glibc's largest mmap threshold (allocator.py): one call
        # over 8 x 512 tokens took 122 ms, three groups 57 ms (SDPA 95).
        masks = [None] * B if mask is None else mask.split(rows)
        return torch.cat([matmul_attention(q, k, v, m, scale, dtype)
                          for q, k, v, m in zip(query.split(rows), key.split(rows), value.split(rows), masks)])
    with torch.autocast("cpu", enabled=False):
        q = query.to(dtype).reshape(B, Hkv, (H // Hkv) * L, D)    # the G heads of a group stacked: (B, Hkv, G*L, D)
        out = _MatmulAttention.apply(q, key.to(dtype), value.to(dtype), mask, scale)
    return out.view(B, H, L, D)


# Every layer of a forward asks for the same bias: keep those of recent lengths (thread-safe cache).
@functools.lru_cache(maxsize=8)
def _causal_bias(groups: int, length: int, dtype, device) -> torch.Tensor:
    """(G*L, L): 0 where query i (of any of the G stacked heads) may see key j <= i, -inf after it."""
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu_(1)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill_(future, float("-inf")).repeat(groups, 1)


class _MatmulAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float):
        B, Hkv, GL, D = q.shape
        L = k.shape[2]
        acc = torch.promote_types(q.dtype, torch.float32)     # fp32 for bf16 inputs (float64 in gradcheck)
        qs, ks = (q.to(acc) * scale).reshape(B * Hkv, GL, D), k.to(acc).reshape(B * Hkv, L, D).transpose(-1, -2)
        if mask is None:
            # The causal mask and the scale folded into the product: s = bias + (q * scale) k^T.
            s = torch.baddbmm(_causal_bias(GL // L, L, acc, q.device), qs, ks).view(B, Hkv, GL, L)
        else:
            s = torch.bmm(qs, ks).view(B, Hkv, GL, L)
            s.view(B, Hkv, GL // L, L, L).masked_fill_(~mask[:, :, None], float("-inf"))
        # torch.softmax, not exp_ in place: exp of the masked -inf entries is 4x slower than of numbers.
        p = torch.softmax(s, dim=-1).to(q.dtype)                               # (B, Hkv, G*L, L)
        out = torch.matmul(p, v)                                               # (B, Hkv, G*L, D)
        ctx.save_for_backward(q, k, v, p, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, p, out = ctx.saved_tensors
        grad = grad.to(q.dtype)
        acc = torch.promote_types(q.dtype, torch.float32)
        dv = torch.matmul(p.transpose(-1, -2), grad)                           # (B, Hkv, L, D)
        # rowsum(dp * p) = rowsum(do * o): one value per query, from (G*L, D) instead of (G*L, L).
        delta = (grad.to(acc) * out.to(acc)).sum(dim=-1, keepdim=True)          # (B, Hkv, G*L, 1)
        ds = torch.matmul(grad, v.transpose(-1, -2)).to(acc)                   # dp, (B, Hkv, G*L, L)
        ds = ds.sub_(delta).mul_(p).to(q.dtype)                                # p promoted in the loop, not copied
        dq = torch.matmul(ds, k).mul_(ctx.scale)                               # (B, Hkv, G*L, D)
        dk = torch.matmul(ds.transpose(-1, -2), q).mul_(ctx.scale)             # (B, Hkv, L, D)
        return dq, dk, dv, None, None
