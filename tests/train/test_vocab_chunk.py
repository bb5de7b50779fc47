"""The loss head's chunk softmax (train/vocab_chunk.py): torch's numbers, and buffers reused inside a run only."""

from __future__ import annotations

import threading

import pytest
import torch

from tunesmith.train import vocab_chunk
from tunesmith.train.loss import LinearCrossEntropy, LinearTokenLogp


def _case(dtype, n=37, vocab=3001, d=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype)
    w = (torch.randn(vocab, d, generator=g) * 0.3).to(dtype)
    t = torch.randint(0, vocab, (n,), generator=g)
    return h, w, t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_target_and_logsumexp_are_torchs(dtype):
    h, w, t = _case(dtype)
    logits = (h @ w.t()).float()
    probs, target, lse = vocab_chunk.softmax(h, w, t)
    assert torch.equal(target, logits.gather(1, t[:, None]).squeeze(1))
    assert torch.equal(lse, torch.logsumexp(logits, dim=-1))
    torch.testing.assert_close(probs, logits.softmax(-1), rtol=1e-6, atol=1e-7)


def test_buffers_are_reused_inside_the_block_and_released_after():
    h, w, t = _case(torch.bfloat16)
    outside = vocab_chunk.softmax(h, w, t)[0].clone()
    with vocab_chunk.reused_buffers():
        first = vocab_chunk.softmax(h, w, t)[0]
        ptr = first.data_ptr()
        assert torch.equal(first, outside)
        low = vocab_chunk.in_dtype(first, torch.bfloat16)
        second = vocab_chunk.softmax(h[:5], w, t[:5])[0]             # fewer rows: the same storage
        assert second.data_ptr() == ptr and vocab_chunk.in_dtype(second, torch.bfloat16).data_ptr() == low.data_ptr()
        seen = {}
        # Another thread (another training) never gets this thread's buffers.
        worker = threading.Thread(target=lambda: seen.update(p=vocab_chunk.softmax(h, w, t)[0].data_ptr()))
        worker.start()
        worker.join()
        assert seen["p"] != ptr
    assert vocab_chunk.softmax(h, w, t)[0].data_ptr() != ptr
    assert getattr(vocab_chunk._LOCAL, "buffers", None) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_losses_and_gradients_equal_with_and_without_reused_buffers(dtype):
    h, w, t = _case(torch.float32, n=70)

    def run(fn):
        x = h.clone().requires_grad_(True)
        out = fn.apply(x, w, t, dtype, 16)                         # 5 chunks: each reuses the last one's buffers
        out.sum().backward()
        return out.detach(), x.grad

    for fn in (LinearCrossEntropy, LinearTokenLogp):
        plain = run(fn)
        with vocab_chunk.reused_buffers():
            reused = run(fn)
        assert torch.equal(plain[0], reused[0]) and torch.equal(plain[1], reused[1])
    # and the chunked loss is cross-entropy's
    expected = torch.nn.functional.cross_entropy((h.to(dtype) @ w.to(dtype).t()).float(), t, reduction="sum")
    with vocab_chunk.reused_buffers():
        torch.testing.assert_close(LinearCrossEntropy.apply(h, w, t, dtype, 16), expected, rtol=1e-5, atol=1e-4)
