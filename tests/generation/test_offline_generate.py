"""Batched, left-padded generation for adapters against the no-cache ground truth: the argmax of the
last position of a full forward through the adapter (its training path) over the whole sequence,
one prompt at a time, recomputed at every step."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.tokenize import prompt_ids
from tunesmith.errors import UserError
from tunesmith.generation import generate, generate_tokens, stop_token_ids
from tunesmith.methods import method_options, prepare_method

NEW = 12
# Lengths differ by up to ~15 tokens, so the batch below is left-padded unevenly.
CONVS = [[{"role": "user", "content": "Hi"}],
         [{"role": "user", "content": "Hello there, how are you doing on this fine morning?"}],
         [{"role": "user", "content": "Code for item 7?"}],
         [{"role": "user", "content": "Name three colours of the rainbow, please."}]]
METHODS = {"lora": dict(r=4, alpha=8, dropout=0.0), "prompt": dict(num_virtual_tokens=6),
           "prefix": dict(num_virtual_tokens=6)}


@pytest.fixture(scope="module")
def base_replies(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    return generate_tokens(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tokenizer, CONVS,
                           max_new_tokens=NEW, batch_size=len(CONVS))


def adapted(tiny_model_dir, name):
    """The method's peft model with every trainable tensor drawn at random, so the adapter matters
    (LoRA starts as the identity otherwise)."""
    from transformers import AutoModelForCausalLM

    prepared = prepare_method(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                              method_options(name=name, **METHODS[name]), 1e-2)
    torch.manual_seed(11)
    with torch.no_grad():
        for p in prepared.model.parameters():
            if p.requires_grad:
                p.normal_(std=0.5 if name == "lora" else 1.0)
    return prepared.model.eval()


@torch.no_grad()
def ground_truth(model, tokenizer, conv) -> list[int]:
    ids, new, stops = prompt_ids(tokenizer, conv), [], stop_token_ids(tokenizer)
    for _ in range(NEW):
        token = int(model(input_ids=torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax())
        if token in stops:
            break
        new.append(token)
    return new


@pytest.mark.parametrize("name", list(METHODS))
def test_batched_left_padded_greedy_equals_no_cache_ground_truth(name, tiny_model_dir, tokenizer, base_replies):
    model = adapted(tiny_model_dir, name)
    truth = [ground_truth(model, tokenizer, conv) for conv in CONVS]
    assert sum(len(t) for t in truth) > 2 * NEW   # the comparison below covers real tokens, not empty replies
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=len(CONVS)) == truth
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=1) == truth
    assert generate(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=len(CONVS)) == \
        [tokenizer.decode(t, skip_special_tokens=True).strip() for t in truth]
    assert base_replies != truth   # so the equality above cannot hold with the adapter ignored
    with model.disable_adapter():   # how evaluation runs its base baselines on the tuned model
        assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=len(CONVS)) == base_replies


@pytest.mark.parametrize("name", ["prompt", "prefix"])
def test_sampling_through_the_virtual_token_loop(name, tiny_model_dir, tokenizer):
    model = adapted(tiny_model_dir, name)
    greedy = generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW)
    # top_p this small keeps only the most likely token, so sampling must reproduce greedy decoding.
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, temperature=0.7, top_p=1e-9) == greedy
    first = generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, temperature=1.5, seed=4)
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, temperature=1.5, seed=4) == first
    assert first != greedy


def test_unsupported_prompt_learning_adapter_is_a_user_error(tiny_model_dir, tokenizer):
    from peft import MultitaskPromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                           MultitaskPromptTuningConfig(num_virtual_tokens=4, num_tasks=2, task_type="CAUSAL_LM"))
    with pytest.raises(UserError, match="MULTITASK_PROMPT_TUNING"):
        generate(model, tokenizer, CONVS[:1], max_new_tokens=2)


def test_bf16_generation_casts_frozen_weights_once_with_autocast_s_numbers(tiny_model_dir, tokenizer, monkeypatch):
    """bf16 generation holds the frozen weights (and a tied head) in bf16 for the call: the same tokens as
    autocast casting them in every step, and the fp32, tied model back afterwards."""
    import contextlib

    from tunesmith.train import precision

    model = adapted(tiny_model_dir, "lora")
    for p in model.parameters():
        p.requires_grad_(False)   # as in evaluation after loading an adapter
    once = generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=len(CONVS), precision="bf16")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert all(p.dtype == torch.float32 for p in model.parameters())
    monkeypatch.setattr(precision, "frozen_linears_in", lambda model, dtype, restore=True: contextlib.nullcontext())
    every_step = generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=len(CONVS), precision="bf16")
    assert once == every_step and sum(map(len, once)) > 0
