"""The engine's KV cache slabs (rows join in place, leave by filling holes) and generation's grouped SDPA."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from tunesmith.generation.attention import gqa_sdpa, grouped_sdpa
from tunesmith.generation.batching import left_pad, positions
from tunesmith.generation.cache import SlabLayer
from tunesmith.generation.engine import fill_holes
from tunesmith.models.attention_switch import attention_configs


def part(rows: int, cols: int, seed: int, heads: int = 2, dim: int = 4) -> DynamicLayer:
    g = torch.Generator().manual_seed(seed)
    layer = DynamicLayer()
    layer.keys = torch.randn(rows, heads, cols, dim, generator=g)
    layer.values = torch.randn(rows, heads, cols, dim, generator=g)
    return layer


def padded(keys: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, t, D) right-aligned to `width` columns, zeros on the left."""
    return torch.nn.functional.pad(keys, (0, 0, width - keys.shape[2], 0))


def poison(slab: SlabLayer) -> None:
    """NaN everywhere outside the live rows and columns: the slab must write before it reads there."""
    for buf in (slab.k, slab.v):
        buf[slab.rows:] = float("nan")
        buf[:, :, :slab.start] = float("nan")
        buf[:, :, slab.end:] = float("nan")


def test_rows_join_in_place_and_leave_by_filling_holes():
    a, b, c, d = part(2, 5, 0), part(1, 3, 1), part(2, 4, 2), part(1, 6, 3)
    slab = SlabLayer.stack([a], 5, row_room=6)
    poison(slab)
    assert slab.k.shape[0] == 6 and torch.equal(slab.keys, a.keys)
    buffer = slab.k.data_ptr()

    assert slab.room_for(1, 5, 8)
    slab.append([b], 5)                                   # a shorter prompt: zeros on its left
    expected = torch.cat([a.keys, padded(b.keys, 5)])
    assert torch.equal(slab.keys, expected)
    assert torch.equal(slab.values, torch.cat([a.values, padded(b.values, 5)]))

    step = part(3, 1, 4)
    slab.update(step.keys, step.values)                   # a decode step writes in place
    expected = torch.cat([expected, step.keys], dim=2)    # (3, H, 6, D)
    assert torch.equal(slab.keys, expected)

    order, moves = fill_holes([1, 2])                     # row 0 leaves: row 2 takes its place
    assert (order, moves) == ([2, 1], [(2, 0)])
    slab.keep(moves, len(order), cut=0)
    expected = expected[order]
    assert torch.equal(slab.keys, expected)

    slab.append([c], 6)                                   # narrower than the live columns
    expected = torch.cat([expected, padded(c.keys, 6)])
    assert torch.equal(slab.keys, expected)
    assert not slab.room_for(1, 7, 1)                     # wider than every column up to `end`
    assert not slab.room_for(3, 6, 1)                     # 4 of 6 rows taken
    assert not slab.room_for(1, 6, 10 ** 6)               # not that many spare columns

    slab.keep([], 4, cut=1)                               # (the engine cuts columns that are padding in every row)
    poison(slab)
    expected = expected[:, :, 1:]
    assert torch.equal(slab.keys, expected) and slab.start == 1
    assert slab.room_for(1, 6, 1)
    slab.append([d], 6)                                   # wider: the running rows get a zero column back
    expected = torch.cat([padded(expected, 6), d.keys])
    assert torch.equal(slab.keys, expected)
    assert torch.equal(slab.values[-1:], d.values)
    assert slab.k.data_ptr() == buffer                    # nothing was reallocated


def test_fill_holes_moves_only_rows_past_the_kept_count():
    assert fill_holes([0, 1, 2]) == ([0, 1, 2], [])
    assert fill_holes([0, 2, 3, 5]) == ([0, 5, 2, 3], [(5, 1)])
    assert fill_holes([4, 5]) == ([4, 5], [(4, 0), (5, 1)])


def test_under_autocast_the_slab_holds_what_sdpa_would_cast_to():
    # Rotary embedding leaves keys in fp32 under autocast; SDPA would cast them to bf16 in every step.
    layer = part(2, 4, 5)
    layer.values = layer.values.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slab = SlabLayer.stack([layer], 6)
        step = part(2, 1, 6)
        keys, values = slab.update(step.keys, step.values.bfloat16())
    assert keys.dtype == values.dtype == torch.bfloat16
    assert torch.equal(keys[:, :, 2:], torch.cat([layer.keys, step.keys], 2).bfloat16())
    assert torch.count_nonzero(keys[:, :, :2]) == 0
    plain = SlabLayer.stack([part(2, 4, 5)], 4)
    assert plain.keys.dtype == torch.float32


def test_grouped_sdpa_equals_transformers_sdpa_under_a_padding_mask(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    attn = model.model.layers[0].self_attn
    assert attn.num_key_value_groups == 2
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 5, 16, generator=g)                           # (B, Hq, S, D)
    k, v = torch.randn(3, 2, 9, 16, generator=g), torch.randn(3, 2, 9, 16, generator=g)
    mask = torch.ones(3, 1, 5, 9, dtype=torch.bool).tril(4)
    mask[1, :, :, :3] = False                                           # a left-padded row
    ours, _ = gqa_sdpa(attn, q, k, v, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(attn, q, k, v, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (3, 5, 4, 16)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)

    # Whole model, a left-padded prefill: the same logits, and the config restored after the block.
    ids, pad_mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12]], 0)
    inputs = {"input_ids": ids, "attention_mask": pad_mask, "position_ids": positions(pad_mask)}
    with torch.no_grad():
        expected = model(**inputs).logits
        configs = attention_configs(model)
        with grouped_sdpa(configs):
            assert model.config._attn_implementation == "tunesmith_gqa_sdpa"
            got = model(**inputs).logits
    assert model.config._attn_implementation == "sdpa"
    keep = pad_mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], rtol=0, atol=1e-5)


def test_half_precision_decode_attention_is_transformers_packed_path_with_or_without_a_mask(tiny_model_dir):
    """One query position over bf16 keys: what transformers computes when a mask is given (`pack_gqa`), bit for
    bit, also where it is not (transformers' `enable_gqa` there is within bf16 rounding, and slower)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    attn = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).model.layers[0].self_attn
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, 1, 16, generator=g)                           # fp32 after rotary under autocast
    k = torch.randn(3, 2, 9, 16, generator=g).bfloat16()
    v = torch.randn(3, 2, 9, 16, generator=g).bfloat16()
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, :, :, :4] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = gqa_sdpa(attn, q, k, v, mask, scaling=0.25)
        theirs, _ = sdpa_attention_forward(attn, q, k, v, mask, scaling=0.25)
        assert ours.dtype == torch.bfloat16 and ours.shape == (3, 1, 4, 16) and ours.is_contiguous()
        assert torch.equal(ours, theirs)
        ours, _ = gqa_sdpa(attn, q, k, v, None, scaling=0.25)
        theirs, _ = sdpa_attention_forward(attn, q, k, v, None, scaling=0.25)       # enable_gqa
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=0.02, atol=0.02)
        per_head = mask.expand(3, 4, 1, 9).clone()                       # a mask per query head: transformers' path
        per_head[:, 1, :, 0] = False
        assert torch.equal(gqa_sdpa(attn, q, k, v, per_head, scaling=0.25)[0],
                           sdpa_attention_forward(attn, q, k, v, per_head, scaling=0.25)[0])
        # Head h reads key/value head h // 2: move head 1's keys and only query heads 2 and 3 change.
        k2 = k.clone()
        k2[:, 1] = k2[:, 1].flip(1)
        moved, _ = gqa_sdpa(attn, q, k2, v, None, scaling=0.25)
    assert torch.equal(moved[:, :, :2], ours[:, :, :2]) and not torch.equal(moved[:, :, 2:], ours[:, :, 2:])


def test_a_full_slab_grows_keeping_its_live_rows_and_spare_row_room():
    a = part(2, 5, 7)
    slab = SlabLayer.stack([a], 5, row_room=4)             # capacity 5 + GROW_MIN columns, 4 rows
    poison(slab)
    expected = a.keys
    for i in range(slab.k.shape[2] - 5 + 3):               # 3 steps past the capacity
        step = part(2, 1, 100 + i)
        keys, _ = slab.update(step.keys, step.values)
        expected = torch.cat([expected, step.keys], dim=2)
    assert slab.k.shape[0] == 4 and slab.k.shape[2] >= expected.shape[2]
    assert torch.equal(keys, expected) and torch.equal(slab.keys, expected)
    assert slab.room_for(2, 3, 1)                         # the spare rows survived the growth
    b = part(2, 3, 8)
    slab.append([b], 3)
    assert torch.equal(slab.keys, torch.cat([expected, padded(b.keys, expected.shape[2])]))
