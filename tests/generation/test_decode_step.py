"""The decode step without transformers' glue (generation/decode_step.py) gives transformers' logits bit for bit."""

from __future__ import annotations

import pytest
import torch

from tunesmith.generation.batching import left_pad, positions
from tunesmith.generation.cache import ModelCall, new_cache, slab_cache
from tunesmith.generation.decode_step import DecodeStep
from tunesmith.train.precision import inference_precision

VOCAB = 96


def tiny(arch: str, **extra):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=False)
    config, cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
                   "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    if arch == "mistral":
        common["sliding_window"] = None
    torch.manual_seed(0)
    model = cls(config(**{**common, **extra})).eval()
    if arch == "qwen2":
        with torch.no_grad():
            for layer in model.model.layers:          # random init leaves q/k/v biases at 0: make them count
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(std=0.5)
    return model


PROMPTS = [[5, 9, 14, 3, 77, 21, 8], [40, 2], [11, 12, 13, 14, 15]]


def decode_both(model, steps: int = 6, hole: bool = False, prompts: list[list[int]] = PROMPTS, short_draft: bool = True):
    """Prefill `prompts` (left-padded) into a cache through transformers' forward and through the step, then feed
    both the same greedy tokens: one a row per step, and at step 3 a speculative verification's three (with
    `short_draft`, the second row's third one padding on the right, as a shorter draft leaves it). The logits of
    every pass, both ways."""
    plain, fast = ModelCall(model), ModelCall(model)
    plain.step = None
    assert fast.step is not None
    ids, mask = left_pad(prompts, 0, torch.device("cpu"))
    caches, out = [], []
    for call in (plain, fast):
        cache = new_cache(model)
        out.append(call.last_logits(cache, input_ids=ids, attention_mask=mask, position_ids=positions(mask)))
        caches.append(slab_cache([cache], ids.shape[1]))
    out = [tuple(out)]
    tokens = out[0][0].argmax(-1)[:, None]                                        # (B, 1)
    rows = len(prompts)
    for step in range(steps):
        if step == 3:
            fed = torch.cat([tokens, tokens.roll(1, 0), tokens.roll(2, 0)], dim=1)         # (B, 3)
            fed_mask = torch.ones_like(fed)
            if short_draft:
                fed_mask[1 % rows, 2] = 0
            inputs = dict(input_ids=fed, position_ids=mask.sum(1, keepdim=True) + torch.arange(3))
            mask = torch.cat([mask, fed_mask], dim=1)
            a = plain.tail_logits(caches[0], 3, **inputs, attention_mask=mask)
            b = fast.tail_logits(caches[1], 3, **inputs, attention_mask=mask)
            assert a.shape == (rows, 3, VOCAB)
            out.append((a, b))
            tokens = a[:, -1].argmax(-1)[:, None]
            continue
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        if hole and step == 2:
            mask[1, -2] = 0                          # a rejected draft column, masked in the middle
        inputs = dict(input_ids=tokens, attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1)
        a = plain.last_logits(caches[0], **inputs)
        b = fast.last_logits(caches[1], **inputs)
        out.append((a, b))
        tokens = a.argmax(-1)[:, None]
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_logits_equal_transformers(arch, precision):
    model = tiny(arch)
    with torch.no_grad(), inference_precision(model, precision):
        pairs = decode_both(model)
    for a, b in pairs:
        assert a.shape == b.shape and a.shape[0] == len(PROMPTS) and a.shape[-1] == VOCAB
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    assert not torch.equal(pairs[0][0], pairs[-1][0])          # the steps did move on


def test_masked_columns_in_the_middle_and_a_batch_without_padding():
    model = tiny("llama")
    with torch.no_grad():
        for a, b in decode_both(model, hole=True):
            assert torch.equal(a, b)
        for precision in ("fp32", "bf16"):    # nothing masked: transformers passes no mask at all
            with inference_precision(model, precision):
                for a, b in (decode_both(model, prompts=PROMPTS[:1], short_draft=False)
                             + decode_both(model, prompts=[PROMPTS[0]] * 2, short_draft=False)):
                    assert torch.equal(a, b)


def test_through_a_peft_lora_adapter():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    with torch.no_grad():
        pairs = decode_both(model)
        for a, b in pairs:
            assert torch.equal(a, b)
        with model.disable_adapter():                  # the step honours peft's switch, as the forward does
            off = decode_both(model)
    for c, d in off:
        assert torch.equal(c, d)
    assert (pairs[0][0] - off[0][0]).abs().max() > 0.1


def test_the_engine_decodes_through_it(tiny_model_dir, tokenizer):
    """No pass of the engine reaches the model's forward (prefill and decode steps run the step), and the
    replies are what transformers' forward gives token for token."""
    from tunesmith.generation import Engine, GenRequest, stop_token_ids
    from tunesmith.models import load_model

    model = load_model(str(tiny_model_dir)).eval()
    calls = []

    def replies(use_step: bool):
        engine = Engine(model, tokenizer, None, stop_token_ids(tokenizer), max_batch=4)
        run = engine.forward._run
        engine.forward._run = lambda *a: calls.append(1) or run(*a)       # transformers' forward, counted
        if not use_step:
            engine.forward.step = None
        rows = [GenRequest(prompt_ids=p, sink=None, max_tokens=12, temperature=0.0, text=False, timeout_s=60.0)
                for p in ([1, 50, 60, 70], [1, 80], [1, 90, 91, 92, 93, 94])]
        engine.run(rows)
        return [r.generated for r in rows], engine.stats["decode_steps"]

    fast, steps = replies(True)
    assert steps >= 10 and not calls
    plain, steps = replies(False)
    assert plain == fast and len(calls) == 1 + steps     # one prefill of the three rows, then the steps


def test_not_for_sliding_windows_hooks_patched_forwards_or_other_calls():
    assert DecodeStep.of(tiny("mistral", sliding_window=16)) is None
    qwen = tiny("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert DecodeStep.of(qwen) is None

    step = DecodeStep.of(tiny("llama"))
    cache, ids, mask = new_cache(step.model), torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.long)
    pos = torch.zeros(1, 1, dtype=torch.long)
    assert step.applies(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
    # A hook or a patched forward on a module whose forward the step writes out (bottleneck adapters hook
    # attention blocks): the call goes through transformers; hooks on the modules it calls are fine.
    attn, layer = step.model.model.layers[1].self_attn, step.model.model.layers[0]
    for add in (lambda: attn.register_forward_hook(lambda *a: None),
                lambda: layer.register_forward_pre_hook(lambda *a: None),
                lambda: torch.nn.modules.module.register_module_forward_hook(lambda *a: None)):
        handle = add()
        assert not step.applies(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
        handle.remove()
        assert step.applies(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
    layer.forward = layer.forward
    assert not step.applies(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
    del layer.forward
    handle = attn.q_proj.register_forward_hook(lambda *a: None)
    assert step.applies(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
    handle.remove()
    assert not step.applies(cache, input_ids=torch.tensor([[3, 4]]), attention_mask=mask, position_ids=pos)
    assert not step.applies(None, input_ids=ids, attention_mask=mask, position_ids=pos)
    assert not step.applies(cache, inputs_embeds=torch.zeros(1, 1, 64), attention_mask=mask, position_ids=pos)
    step.model.config._attn_implementation = "eager"       # its mask is another one: not written out here
    assert not step.applies(cache, input_ids=ids, attention_mask=mask, position_ids=pos)
