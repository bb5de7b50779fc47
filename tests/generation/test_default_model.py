"""The engine on the real default model (SmolLM2-135M): greedy replies token for token as
transformers' `generate` gives them (offline generation's path before the engine), with and without
prompt lookup."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.tokenize import prompt_ids
from tunesmith.generation import generate_tokens, left_pad, pad_id, stop_token_ids
from tunesmith.generation.sampling import generate_kwargs
from tunesmith.generation.stops import cut_at_stop

CONVS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "user", "content": "Extract the order as JSON with keys item, quantity and city.\n"
                                      "Order: Please send three red mugs to Berlin."}],
         [{"role": "user", "content": "Rewrite politely: send me the report now."}]]
NEW = 32


@pytest.mark.slow
@torch.no_grad()
def test_engine_equals_generate_on_the_default_model(default_model_dir, tokenizer):
    from tunesmith.models import load_model

    model = load_model(str(default_model_dir)).eval()
    ids, mask = left_pad([prompt_ids(tokenizer, c) for c in CONVS], pad_id(tokenizer))
    stops = stop_token_ids(tokenizer)
    out = model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs(NEW, pad_id(tokenizer), stops, 0.0))
    expected = [cut_at_stop(row, stops) for row in out[:, ids.shape[1]:].tolist()]
    assert all(len(e) >= 5 for e in expected)
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=2) == expected
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=1, prompt_lookup=8) == expected
