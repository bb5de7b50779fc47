"""Attention as matrix products (train/matmul_attention.py): the same maths as SDPA, and used where it pays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.train import matmul_attention
from tunesmith.train.attention import block_causal_mask
from tunesmith.train.matmul_attention import applies
from tunesmith.train.matmul_attention import matmul_attention as attention


def _inputs(B, H, Hkv, L, D=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, L, D, generator=g, dtype=dtype).requires_grad_() for h in (H, Hkv, Hkv)]


def _block_mask(L: int) -> torch.Tensor:
    """(2, 1, L, L): row 0 holds two examples (the second from L // 3), row 1 three."""
    pos = torch.stack([torch.cat([torch.arange(L // 3), torch.arange(L - L // 3)]),
                       torch.cat([torch.arange(2), torch.arange(L // 2 - 2), torch.arange(L - L // 2)])])
    return block_causal_mask(pos)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_gradients_are_exact_in_float64(masked, heads):
    """torch's numerical gradient check of the hand-written backward, causal and block-masked, with and
    without grouped heads."""
    H, Hkv = heads
    q, k, v = _inputs(2, H, Hkv, 7, D=4)
    mask = _block_mask(7) if masked else None
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, mask, 0.7, dtype=torch.float64), (q, k, v))


@pytest.mark.parametrize("masked", [False, True])
def test_equals_sdpa_in_fp32(masked):
    """In fp32 (every step in one precision) output and gradients equal SDPA's to 1e-5."""
    q, k, v = _inputs(2, 9, 3, 40, dtype=torch.float32)
    mask = _block_mask(40) if masked else None
    grad = torch.randn(2, 9, 40, 16, generator=torch.Generator().manual_seed(1))
    out = attention(q, k, v, mask, dtype=torch.float32)
    got = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    want = [ref, *torch.autograd.grad(ref, (q, k, v), grad)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_bf16_is_as_close_to_fp32_as_sdpa_in_bf16(masked):
    """In bf16 the error against the fp32 result (output and every gradient) stays within 1.5x of SDPA's own
    bf16 error, on average and at worst: scores and softmax are fp32, only the products' operands are bf16."""
    L = 96
    q, k, v = _inputs(2, 9, 3, L, D=64, dtype=torch.float32)
    mask = _block_mask(L) if masked else None
    grad = torch.randn(2, 9, L, 64, generator=torch.Generator().manual_seed(1))

    def run(fn, dtype):
        xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*xs)
        return [t.detach().float() for t in (out, *torch.autograd.grad(out, xs, grad.to(dtype)))]

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)

    exact = run(sdpa, torch.float32)
    ours, theirs = run(lambda q, k, v: attention(q, k, v, mask), torch.bfloat16), run(sdpa, torch.bfloat16)
    for o, t, e in zip(ours, theirs, exact):
        assert float((o - e).abs().mean()) <= 1.5 * float((t - e).abs().mean())
        assert float((o - e).abs().max()) <= 1.5 * float((t - e).abs().max())


def test_used_only_for_short_bf16_calls_on_cpu():
    x32, xb = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8, dtype=torch.bfloat16)
    longest = matmul_attention.MAX_LEN
    assert applies(torch.zeros(1, 1, longest, 8, dtype=torch.bfloat16), 0.0)
    assert not applies(torch.zeros(1, 1, longest + 1, 8, dtype=torch.bfloat16), 0.0)
    assert not applies(xb, 0.1)                         # dropout: SDPA
    assert not applies(x32, 0.0)                        # fp32 without autocast: SDPA is as fast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert applies(x32, 0.0)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not applies(x32, 0.0)


def _attention_ops(model, batch, dtype) -> set[str]:
    from tunesmith.train.attention import packed_attention_for
    from tunesmith.train.loss import CausalLMLoss

    loss = CausalLMLoss(model)
    with packed_attention_for(model), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        with torch.profiler.profile() as prof:
            nll, _ = loss(batch.input_ids, batch.position_ids, batch.targets)
            nll.backward()
    return {e.key for e in prof.key_averages() if "attention" in e.key.lower() or "matmulattention" in e.key.lower()}


def test_packed_attention_takes_it_in_bf16_and_sdpa_in_fp32(tiny_model_dir, tokenizer, monkeypatch):
    """Under bf16 autocast the training forward and backward run no SDPA kernel (short calls); in fp32, and
    for calls longer than MAX_LEN, SDPA runs."""
    from tunesmith.data.packing import collate
    from tunesmith.data.schema import Sample
    from tunesmith.data.tokenize import tokenize_all
    from tunesmith.models import load_model

    samples = [Sample(messages=[{"role": "user", "content": f"question {i} " * (i + 1)},
                                {"role": "assistant", "content": f"answer {i} " * (2 * i + 1)}]) for i in range(5)]
    examples, _ = tokenize_all(tokenizer, samples, max_len=256)
    batch = collate(examples, pack=True, max_len=160, pad_id=0)
    model = load_model(str(tiny_model_dir))
    bf16 = _attention_ops(model, batch, torch.bfloat16)
    assert any("MatmulAttention" in k for k in bf16) and not any("scaled_dot_product" in k for k in bf16)
    fp32 = _attention_ops(model, batch, torch.float32)
    assert any("scaled_dot_product" in k for k in fp32) and not any("MatmulAttention" in k for k in fp32)
    monkeypatch.setattr(matmul_attention, "MAX_LEN", 8)
    long = _attention_ops(model, batch, torch.bfloat16)
    assert any("scaled_dot_product" in k for k in long)


@pytest.mark.parametrize("masked", [False, True])
def test_a_large_batch_runs_in_groups_of_rows_with_the_same_result(masked, monkeypatch):
    """A batch whose scores exceed MAX_SCORES runs in groups of rows (fp32 scores above glibc's largest mmap
    threshold are fresh pages on every call); the output and gradients are those of one call."""
    q, k, v = _inputs(5, 6, 2, 9, D=4)
    mask = _block_mask(9).repeat(3, 1, 1, 1)[:5] if masked else None
    grad = torch.randn(5, 6, 9, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run():
        out = attention(q, k, v, mask, dtype=torch.float64)
        return [out, *torch.autograd.grad(out, (q, k, v), grad)]

    calls = []
    apply = matmul_attention._MatmulAttention.apply
    monkeypatch.setattr(matmul_attention._MatmulAttention, "apply", lambda *a: calls.append(a[0].shape[0]) or apply(*a))
    whole = run()
    assert calls == [5]
    monkeypatch.setattr(matmul_attention, "MAX_SCORES", 2 * 6 * 9 * 9)      # two rows' scores per call
    calls.clear()
    grouped = run()
    assert calls == [2, 2, 1]
    for a, b in zip(grouped, whole):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
