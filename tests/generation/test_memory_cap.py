"""Offline generation caps its batch by the memory the rows' KV cache needs (generation/memory.py)."""

from __future__ import annotations

import torch

from tunesmith.generation import generate_tokens, offline
from tunesmith.generation.memory import MEMORY_SHARE, kv_bytes_per_token, rows_that_fit

CONVS = [[{"role": "user", "content": f"Tell me about item {i}, please, and its colour."}] for i in range(7)]


def test_kv_bytes_per_token_counts_every_layers_keys_and_values(tiny_model_dir):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    tiny = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert kv_bytes_per_token(tiny) == 2 * 2 * 2 * 16 * 4          # layers x (k, v) x kv heads x head dim x fp32
    assert kv_bytes_per_token(tiny.to(torch.bfloat16)) == 2 * 2 * 2 * 16 * 2
    # SmolLM2-135M's shape: 30 layers, 3 kv heads of 64: 46,080 bytes a token in fp32.
    smol = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=576, intermediate_size=8, num_hidden_layers=30,
                                        num_attention_heads=9, num_key_value_heads=3))
    assert kv_bytes_per_token(smol) == 46_080
    assert rows_that_fit(smol, 1000, free_bytes=8 << 30) == int((8 << 30) * MEMORY_SHARE) // 46_080_000 == 93
    assert rows_that_fit(smol, 100_000, free_bytes=1 << 20) == 1                # never fewer than one row


def test_a_batch_that_would_not_fit_runs_in_fewer_rows_with_the_same_replies(tiny_model_dir, tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    full = generate_tokens(model, tokenizer, CONVS, max_new_tokens=16, batch_size=8)
    seen = []
    real_engine = offline.Engine

    def engine(*args, **kwargs):
        seen.append(kwargs["max_batch"])
        return real_engine(*args, **kwargs)

    # Free memory for 3 rows of the longest prompt + 16 new tokens.
    longest = max(len(offline.prompt_ids(tokenizer, c, None)) for c in CONVS)
    free = int(3.5 * (longest + 16) * kv_bytes_per_token(model) / MEMORY_SHARE)
    monkeypatch.setattr(offline, "Engine", engine)
    monkeypatch.setattr(offline, "rows_that_fit", lambda m, tokens: rows_that_fit(m, tokens, free_bytes=free))
    capped = generate_tokens(model, tokenizer, CONVS, max_new_tokens=16, batch_size=8)
    assert seen == [3]
    assert capped == full and sum(map(len, full)) > 0
