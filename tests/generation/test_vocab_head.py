"""The fp32 vocabulary projection of generation passes (generation/vocab_head.py): the same logits bit for bit,
one 2-D product for a strided last-position slice, and the head's own forward wherever it does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import profile

from tunesmith.generation.vocab_head import SLICE, fast_vocab_head, plain_head, project


def _head(vocab: int, hidden: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    head.weight.normal_(0, 0.05)
    return head


class _Model(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.lm_head = head

    def get_output_embeddings(self):
        return self.lm_head


@pytest.mark.parametrize("vocab, hidden", [(49152, 576), (5 * SLICE + 77, 96)])
@pytest.mark.parametrize("rows", [1, 2, 7, 60, 300, 700])
@torch.no_grad()
def test_sliced_products_equal_one_product_bit_for_bit(vocab, hidden, rows):
    head = _head(vocab, hidden)
    x = torch.randn(rows, hidden) * 3
    assert torch.equal(project(head, x), nn.functional.linear(x, head.weight))
    # The last two positions of a (rows, 9, hidden) batch, as transformers slices them: a strided 3-D input.
    h = torch.randn(rows, 9, hidden)
    out = project(head, h[:, -2:])
    assert out.shape == (rows, 2, vocab)
    assert torch.equal(out, nn.functional.linear(h[:, -2:].contiguous(), head.weight))


@torch.no_grad()
def test_a_strided_slice_is_one_matrix_product_not_a_broadcast_weight():
    head = _head(4 * SLICE, 64)
    model = _Model(head)
    last = torch.randn(12, 20, 64)[:, -1:, :]          # what logits_to_keep=1 hands the head after a prefill
    with profile(record_shapes=True) as plain:
        expected = model.lm_head(last)
    assert any(e.name == "aten::bmm" for e in plain.events())   # why: F.linear broadcasts the weight here
    with fast_vocab_head(plain_head(model)), profile(record_shapes=True) as fast:
        got = model.lm_head(last)
    names = [e.name for e in fast.events()]
    assert "aten::bmm" not in names and names.count("aten::mm") == 4
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)   # a batch of matrix-vector products rounds apart


def test_the_heads_own_forward_where_slices_do_not_apply():
    head = _head(3 * SLICE, 32)
    model = _Model(head)
    x = torch.randn(5, 32)
    with fast_vocab_head(plain_head(model)):
        assert "forward" in head.__dict__
        with torch.autocast("cpu", dtype=torch.bfloat16):             # bf16 products: autocast's, unchanged
            got = model.lm_head(x)
        assert got.dtype == torch.bfloat16
        head.weight.requires_grad_(True)                                # a gradient is wanted: autograd's path
        y = model.lm_head(x)
        y.sum().backward()
        assert head.weight.grad is not None
    assert "forward" not in head.__dict__
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(got, model.lm_head(x))


def test_a_forward_set_by_an_outer_block_is_used_and_kept():
    head = _head(3 * SLICE, 32)
    model = _Model(head)
    calls = []

    def outer(x):
        calls.append(x.shape)
        return nn.functional.linear(x, head.weight)

    head.forward = outer
    with torch.autocast("cpu", dtype=torch.bfloat16), fast_vocab_head(plain_head(model)):
        model.lm_head(torch.randn(4, 32))
    assert calls == [(4, 32)]
    assert head.__dict__["forward"] is outer


def test_models_without_a_plain_linear_head_are_left_alone():
    class Tied(nn.Module):
        def get_output_embeddings(self):
            return None

    assert plain_head(Tied()) is None and plain_head(nn.Linear(2, 2)) is None
    with fast_vocab_head(None):
        pass
