"""Packing: first-fit-decreasing rows, restarting positions, no attention across examples."""

from __future__ import annotations

import random

import pytest
import torch

from tunesmith.data.packing import collate, first_fit_decreasing, pack_plan
from tunesmith.data.schema import Sample
from tunesmith.data.tokenize import IGNORE, tokenize_all


def _naive_ffd(lengths, capacity):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins, room = [], []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def test_first_fit_decreasing_matches_the_textbook_scan():
    rng = random.Random(0)
    for _ in range(200):
        capacity = rng.randint(1, 64)
        lengths = [rng.randint(1, 80) for _ in range(rng.randint(0, 80))]
        assert first_fit_decreasing(lengths, capacity) == _naive_ffd(lengths, capacity)
    assert first_fit_decreasing([5, 4, 3, 3, 2, 1], 6) == [[0, 5], [1, 4], [2, 3]]


def test_packing_efficiency_is_reported():
    plan = pack_plan([5, 4, 3, 3, 2, 1, 9], 6)  # 9 does not fit a row and is left out
    assert (plan.rows, plan.examples, plan.real_tokens) == (3, 6, 18)
    assert plan.efficiency == pytest.approx(1.0)
    plan = pack_plan([4, 4, 4], 6)
    assert plan.efficiency == pytest.approx(12 / 18)


def _examples(tokenizer, n=9):
    rng = random.Random(1)
    samples = [Sample(messages=[{"role": "system", "content": "s"},
                                {"role": "user", "content": " ".join(rng.choice(["red", "blue", "cat", "sat", "mat"])
                                                                     for _ in range(rng.randint(1, 12)))},
                                {"role": "assistant", "content": f"Answer {i}" + " ok" * rng.randint(0, 8)}])
               for i in range(n)] + [Sample(text="Continued pre-training text.")]
    examples, _ = tokenize_all(tokenizer, samples, max_len=96)
    return examples


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(tiny_model_dir, tokenizer, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    examples = _examples(tokenizer)
    batch = collate(examples, pack=True, max_len=96, pad_id=tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] < len(examples)  # several examples really share rows
    with torch.no_grad():
        # Normal forward, no attention_mask: transformers turns restarting position_ids into a
        # block-diagonal causal mask, but only without a KV cache (as in training, use_cache=False).
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        # The same rows with positions that do not restart: attention leaks, so logits must differ.
        leaky = model(input_ids=batch.input_ids,
                      position_ids=torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids), use_cache=False).logits
    rows = first_fit_decreasing([len(e) for e in examples], 96)
    checked, worst_leak = 0, 0.0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ex = examples[i]
            n = len(ex)
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            assert batch.input_ids[r, at:at + n].tolist() == ex.input_ids
            assert batch.targets[r, at:at + n].tolist() == ex.targets
            assert batch.position_ids[r, at:at + n].tolist() == list(range(n))
            torch.testing.assert_close(packed[r, at:at + n], alone, atol=1e-4, rtol=0)
            if at > 0:
                worst_leak = max(worst_leak, (leaky[r, at:at + n] - alone).abs().max().item())
            at += n
            checked += 1
        assert (batch.targets[r, at:] == IGNORE).all()  # padding never reaches the loss
    assert checked == len(examples)
    assert worst_leak > 1e-2  # the check above can fail: without restarts the logits move


def test_batch_efficiency_counts_real_tokens(tokenizer):
    examples = _examples(tokenizer)
    batch = collate(examples, pack=True, max_len=96, pad_id=tokenizer.pad_token_id)
    real = sum(len(e) for e in examples)
    assert batch.real_tokens == real
    assert batch.efficiency == pytest.approx(real / batch.input_ids.numel())
    unpacked = collate(examples, pack=False, max_len=96, pad_id=tokenizer.pad_token_id)
    assert batch.efficiency > unpacked.efficiency
    assert batch.n_targets == unpacked.n_targets == sum(e.n_targets for e in examples)


def test_collate_goes_flat_only_when_rows_waste_padding():
    from tunesmith.data.packing import FLAT_BELOW
    from tunesmith.data.tokenize import Tokenized

    def ex(n):
        return Tokenized(input_ids=[1] * n, targets=[1] * n)

    tight = [ex(60), ex(40), ex(55), ex(45)]          # two full rows of 100
    loose = [ex(95), ex(30)]                          # rows of 95 and 30: 66 % real
    assert 125 < FLAT_BELOW * 190
    assert collate(tight, pack=True, max_len=100, pad_id=0, flat=None).input_ids.shape == (2, 100)
    batch = collate(loose, pack=True, max_len=100, pad_id=0, flat=None)
    assert batch.input_ids.shape == (1, 125)
    assert batch.position_ids[0].tolist() == list(range(95)) + list(range(30))
    assert collate(loose, pack=True, max_len=100, pad_id=0, flat=False).input_ids.shape == (2, 95)
    assert collate(loose, pack=False, max_len=100, pad_id=0, flat=None).input_ids.shape == (2, 95)
