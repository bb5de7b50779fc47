"""The vocabulary projection of a generation pass in fp32 on a CPU: one 2-D product, in vocabulary slices.

Two things made it slow (SmolLM2-135M, 49,152 x 576 tied head, 2-core AMD EPYC with AVX-512, two threads, fp32):

- transformers projects only the last position, `lm_head(hidden[:, -1:, :])`. After a prefill of
  several rows that slice is not contiguous, and `F.linear` of a 3-D input it cannot fold into a
  matrix broadcasts the weight into a batched product instead: one matrix-vector product per row,
  each reading the whole 113 MB weight (60 rows: 217 ms instead of 36 ms as one product). The same
  happens to a speculative verification's last few positions.
- As one product, a few dozen rows against the whole weight run at ~100 GFLOP/s (60 rows: 33 ms);
  the same product over slices of 2,048 vocabulary rows, each written into its columns of the
  output, runs at ~140 (24 ms; 2-512 rows, 1.07-1.49x). Outputs are bit for bit those of one product
  at every row count tried (1-512 with MKL's AVX-512 and AVX2 kernels, 1,024 with AVX-512): each slice changes which
  logits a call computes, not the sum that makes any of them. From ~1,000 rows one product is as fast.

One row, a head with a bias, bf16 (autocast casts the input into a fresh contiguous tensor, and packed_linear.py serves
frozen bf16 weights), a head packed for oneDNN (packed_linear.py: fp32 on AMD CPUs, where it is 4x faster than these
slices) and any head that is not a plain `nn.Linear` keep the head's own forward.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tunesmith.models.forward_swap import forwards_replaced
from tunesmith.models.packed_linear import is_packed

SLICE = 2048                 # vocabulary rows per product
ROWS = range(2, 513)         # row counts where slices measured faster than one product


def _applies(head: nn.Linear, x: torch.Tensor) -> bool:
    w = head.weight
    return (w.dtype == torch.float32 and x.dtype == torch.float32 and w.device.type == "cpu" and not is_packed(head)
            and not torch.is_autocast_enabled("cpu") and not (torch.is_grad_enabled() and
                                                             (x.requires_grad or w.requires_grad)))


def project(head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """head(x) for x (..., hidden) -> (..., vocab): one 2-D product, sliced over the vocabulary where that pays."""
    x2 = x.reshape(-1, x.shape[-1])                                   # (rows, hidden); copies a strided slice
    w, rows = head.weight, x2.shape[0]
    if rows not in ROWS or w.shape[0] <= SLICE or head.bias is not None:
        out = nn.functional.linear(x2, w, head.bias)
    else:
        out = x2.new_empty(rows, w.shape[0])                          # (rows, vocab)
        for start in range(0, w.shape[0], SLICE):
            torch.mm(x2, w[start:start + SLICE].t(), out=out[:, start:start + SLICE])
    return out.view(*x.shape[:-1], w.shape[0])


def plain_head(model: nn.Module) -> nn.Linear | None:
    """The model's output embedding when it is a plain `nn.Linear` (through a peft wrapper too), else None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    return head if type(head) is nn.Linear else None


@contextlib.contextmanager
def fast_vocab_head(head: nn.Linear | None):
    """Inside the block `head` (from `plain_head`; None: nothing to do) projects with `project` where it applies."""
    if head is None:
        yield
        return
    inner = head.forward            # the class's forward, or one an outer block set (packed_linear.py)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return project(head, x) if _applies(head, x) else inner(x)

    with forwards_replaced([(head, forward)]):
        yield
