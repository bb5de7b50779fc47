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


@pytest.mark.parametrize("path", ["masked", "segments"])
def test_packed_attention_equals_block_masked_sdpa(path, tiny_model_dir, tokenizer, monkeypatch):
    """Both packed paths (one masked call, one causal call per example) give transformers' own masked
    result: same loss and gradients."""
    from tunesmith.train import attention

    # The overhead constant decides the path: huge -> always one masked call, zero -> always per example.
    monkeypatch.setattr(attention, "CALL_OVERHEAD_PAIRS", 10**12 if path == "masked" else 0)
    seen = []
    plan = attention._plan
    monkeypatch.setattr(attention, "_plan", lambda ids: seen.append(plan(ids)[0]) or plan(ids))
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
    assert seen and set(seen) == {path}
    assert abs(new_loss - ref_loss) < 1e-4 * abs(ref_loss)
    for a, b in zip(new_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
