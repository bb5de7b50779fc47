"""The fused linear + cross-entropy equals the plain computation, in value and in both gradients."""

import pytest
import torch
import torch.nn.functional as F

from tunesmith.train.loss import linear_cross_entropy


@pytest.mark.parametrize("chunk", [7, 1024])
def test_fused_ce_matches_reference_fp32(chunk):
    torch.manual_seed(0)
    h = torch.randn(50, 32, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(1000, 32) * 0.3).requires_grad_()
    t = torch.randint(0, 1000, (50,))
    ref = F.cross_entropy(h @ w.t(), t, reduction="sum")
    gh_ref, gw_ref = torch.autograd.grad(ref * 0.37, (h, w))
    out = linear_cross_entropy(h, w, t, chunk=chunk)
    gh, gw = torch.autograd.grad(out * 0.37, (h, w))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(gh, gh_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gw, gw_ref, atol=1e-6, rtol=1e-5)


def test_fused_ce_frozen_head_and_no_grad():
    torch.manual_seed(1)
    h = torch.randn(9, 16, requires_grad=True)
    w = torch.randn(100, 16)  # frozen: no weight gradient is computed or returned
    t = torch.randint(0, 100, (9,))
    out = linear_cross_entropy(h, w, t)
    (gh,) = torch.autograd.grad(out, (h,))
    (gh_ref,) = torch.autograd.grad(F.cross_entropy(h @ w.t(), t, reduction="sum"), (h,))
    torch.testing.assert_close(gh, gh_ref, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), F.cross_entropy(h @ w.t(), t, reduction="sum"))


def test_fused_ce_under_bf16_autocast_is_close():
    torch.manual_seed(2)
    h = torch.randn(64, 64, requires_grad=True)
    w = torch.randn(500, 64) * 0.2
    t = torch.randint(0, 500, (64,))
    ref = F.cross_entropy(h @ w.t(), t, reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(h, w, t)
    assert out.dtype == torch.float32
    assert abs(float(out) - float(ref)) / float(ref) < 1e-2


def test_chunking_is_the_cheapest_partition():
    import itertools
    import random

    from tunesmith.train.attention import chunk_segments

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 7))]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        segments = [(s, s + n) for s, n in zip(starts, lengths)]
        overhead = rng.choice([0, 500, 20_000, 10**6])
        cost, chunks = chunk_segments(segments, overhead)
        brute = min(sum((sum(lengths[a:b])) ** 2 + overhead for a, b in zip((0,) + cuts, cuts + (len(lengths),)))
                    for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k))
        assert cost == brute
        assert [c[:2] for c in chunks][0][0] == 0 and chunks[-1][1] == starts[-1] + lengths[-1]
        assert sum(k for _, _, k in chunks) == len(lengths)
        assert sum((e - s) ** 2 + overhead for s, e, _ in chunks) == cost
    # A long example gets its own causal call while short neighbours share one.
    _, chunks = chunk_segments([(0, 500), (500, 510), (510, 520), (520, 530)], 1_000)
    assert chunks == [(0, 500, 1), (500, 530, 3)]


@pytest.mark.parametrize("path", ["masked", "chunks", "mixed"])
def test_packed_attention_equals_block_masked_sdpa(path, tiny_model_dir, tokenizer, monkeypatch):
    """Every packed path (one masked call; one causal call per example; chunks that mix the two) gives
    transformers' own masked result: same loss and gradients."""
    from tunesmith.train import attention

    # The overhead constant decides the path: huge -> one masked call, zero -> one call per example,
    # in between -> short neighbours share a masked call and long examples get a causal one.
    overhead = {"masked": 10**12, "chunks": 0, "mixed": 1_500}[path]
    monkeypatch.setattr(attention, "CALL_OVERHEAD_PAIRS", overhead)
    seen = []
    plan = attention._plan
    monkeypatch.setattr(attention, "_plan", lambda ids: seen.append(plan(ids)) or plan(ids))
    from tunesmith.data.packing import collate
    from tunesmith.data.schema import Sample
    from tunesmith.data.tokenize import tokenize_all
    from tunesmith.models import load_model
    from tunesmith.train.attention import packed_attention_for
    from tunesmith.train.loss import CausalLMLoss

    samples = [Sample(messages=[{"role": "user", "content": f"question {i} " * (i + 1)},
                                {"role": "assistant", "content": f"answer {i} " * (2 * i + 1)}]) for i in range(5)]
    examples, _ = tokenize_all(tokenizer, samples, max_len=256)
    batch = collate(examples, pack=True, max_len=160, pad_id=0)
    assert batch.input_ids.shape[0] >= 2  # several rows, with padding at the end of some
    model = load_model(str(tiny_model_dir))
    loss = CausalLMLoss(model)

    def run():
        model.zero_grad()
        nll, _ = loss(batch.input_ids, batch.position_ids, batch.targets)
        nll.backward()
        return float(nll), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ref_loss, ref_grads = run()
    with packed_attention_for(model):
        new_loss, new_grads = run()
    assert model.config._attn_implementation == "sdpa"  # restored afterwards
    kinds = {kind for kind, _ in seen}
    assert kinds == {"masked" if path == "masked" else "chunks"}
    if path != "masked":
        masks = [mask is not None for _, rows in seen for row in rows for _, _, mask in row]
        assert any(masks) == (path == "mixed") and not all(masks)
    assert abs(new_loss - ref_loss) < 1e-4 * abs(ref_loss)
    for a, b in zip(new_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_flat_rows_equal_packed_rows(tiny_model_dir, tokenizer):
    """A padding-free micro-batch (every example in one row) gives the loss and gradients of the same
    examples packed into padded rows of max_len."""
    from tunesmith.data.packing import collate
    from tunesmith.data.schema import Sample
    from tunesmith.data.tokenize import tokenize_all
    from tunesmith.models import load_model
    from tunesmith.train.attention import packed_attention_for
    from tunesmith.train.loss import CausalLMLoss

    samples = [Sample(messages=[{"role": "user", "content": f"q {i} " * (3 * i + 1)},
                                {"role": "assistant", "content": f"a {i} " * (5 * i + 2)}]) for i in range(6)]
    examples, _ = tokenize_all(tokenizer, samples, max_len=256)
    rows = collate(examples, pack=True, max_len=128, pad_id=0)
    flat = collate(examples, pack=True, max_len=128, pad_id=0, flat=True)
    assert rows.input_ids.shape[0] >= 2 and flat.input_ids.shape[0] == 1
    assert flat.input_ids.shape[1] == sum(len(e) for e in examples)  # no padding
    model = load_model(str(tiny_model_dir))
    loss = CausalLMLoss(model)

    def run(batch):
        model.zero_grad()
        nll, n = loss(batch.input_ids, batch.position_ids, batch.targets)
        nll.backward()
        return float(nll), int(n), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    with packed_attention_for(model):
        a, b = run(rows), run(flat)
    assert a[1] == b[1]
    assert abs(a[0] - b[0]) < 1e-5 * abs(a[0])
    # Different row shapes reassociate fp32 matmul sums: compare against each gradient's scale.
    for x, y in zip(a[2], b[2]):
        assert float((x - y).abs().max()) <= 1e-4 * float(y.abs().max())
