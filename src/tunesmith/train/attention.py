"""Attention for packed rows: each example attends only to itself, at the cost of its own length.

A packed row holds several examples whose `position_ids` restart at 0. `_plan` picks, per forward,
the cheapest exact way to keep them apart under a simple cost model (query-key pairs plus a fixed
cost per SDPA call):

- one SDPA call over the whole batch with the block-diagonal causal mask built from `position_ids`
  (cheap for short rows: one dispatch, cost ~ B*T^2);
- per row, contiguous chunks of whole examples, each chunk one call: a causal call when it holds one
  example, a block-masked call when it holds several. A dynamic programme over the examples picks the
  chunking, so long examples get their own causal call (len^2 instead of T^2) while runs of short
  ones share a call. This is what makes padding-free rows (a whole micro-batch in one row) cheap.

Rows that hold a single example take the unmasked causal kernel. Padding forms its own segment, so
it never mixes with real tokens. Every path equals transformers' masked attention (tests/train/test_loss.py,
fp32). In bf16 on CPU, a call of at most 512 tokens runs as two matrix products around an fp32 softmax
instead of SDPA (matmul_attention.py: 1.6-3.7x faster at those lengths, with errors of SDPA's size in bf16).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from tunesmith.models.adapters import unwrap
from tunesmith.models.attention_switch import attention_configs, attention_switched
from tunesmith.train import matmul_attention

NAME = "tunesmith_packed"
SWITCHABLE = ("sdpa", "eager", NAME)   # what packed attention may stand in for: it computes what they compute


# One SDPA call has a fixed cost (dispatch, layout, the backward's bookkeeping) that on this CPU equals
# about 75k query-key pairs of masked attention (measured forward + backward in bf16 on SmolLM2 shapes,
# when per-example calls still sliced their inputs; split/cat calls cost less, so this errs towards
# fewer, larger calls).
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


def chunk_segments(segments: list[tuple[int, int]], overhead: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Cheapest split of consecutive segments into chunks: (cost, [(start, end, n_segments)])."""
    n = len(segments)
    best = [0] + [None] * n          # best[j]: cost of the first j segments
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        end = segments[j - 1][1]
        for i in range(j - 1, -1, -1):
            length = end - segments[i][0]
            cost = best[i] + length * length + overhead
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
            if length * length > best[j]:
                break  # longer chunks only cost more
    chunks, j = [], n
    while j:
        i = cut[j]
        chunks.append((segments[i][0], segments[j - 1][1], j - i))
        j = i
    return best[n], chunks[::-1]


def _plan(position_ids: torch.Tensor):
    """("causal", None), ("masked", mask) or ("chunks", per row [(start, end, mask or None)])."""
    bounds = segment_bounds(position_ids)
    if all(len(row) == 1 for row in bounds):
        return "causal", None
    B, T = position_ids.shape
    planned = [chunk_segments(row, CALL_OVERHEAD_PAIRS) for row in bounds]
    if B * T * T + CALL_OVERHEAD_PAIRS <= sum(cost for cost, _ in planned):
        return "masked", block_causal_mask(position_ids)
    rows = []
    for b, (_, chunks) in enumerate(planned):
        rows.append([(s, e, None if k == 1 else block_causal_mask(position_ids[b:b + 1, s:e])) for s, e, k in chunks])
    return "chunks", rows


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

    def attend(q, k, v, mask):
        """One call: causal when `mask` is None. Short bf16 calls as matrix products (matmul_attention.py)."""
        if matmul_attention.applies(q, dropout):
            return matmul_attention.matmul_attention(q, k, v, mask, scaling)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout,
                                              scale=scaling, enable_gqa=gqa)

    if kind != "chunks":
        return attend(query, key, value, arg).transpose(1, 2).contiguous(), None
    # split/cat rather than slicing: a slice's backward writes a zero tensor of the full input size
    # per slice, which costs more than the attention itself when a row holds dozens of examples.
    rows = []
    for chunks, q, k, v in zip(arg, query.split(1), key.split(1), value.split(1)):
        sizes = [e - s for s, e, _ in chunks]
        pieces = [attend(qc, kc, vc, mask)
                  for (_, _, mask), qc, kc, vc in zip(chunks, q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2))]
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
    out = torch.cat(rows) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    return None


def register() -> None:
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, _no_mask)


def supports(model) -> bool:
    """Whether `packed_attention_for` can switch this model (peft wrapper or not) to packed attention."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    return config is not None and getattr(config, "_attn_implementation", None) in SWITCHABLE


@contextlib.contextmanager
def packed_attention_for(model):
    """Switch `model` (a transformers model, possibly inside peft) to packed attention for the block."""
    inner = unwrap(model)
    if not supports(inner):
        yield
        return
    register()
    with attention_switched(attention_configs(inner), NAME, SWITCHABLE):
        yield
