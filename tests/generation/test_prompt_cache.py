"""The engine's prompt cache: requests that start as earlier ones did prefill only the rest, per adapter,
and every greedy token stays what a whole-prompt prefill gives."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.tokenize import prompt_ids
from tunesmith.generation import Engine, GenRequest, LoRABank, stop_token_ids
from tunesmith.generation.prefix import common_length
from tunesmith.generation.prompt_cache import PromptCache

NEW = 16
DEMOS = [{"role": "system", "content": "Extract the order as JSON with the keys item, count, colour and city."},
         {"role": "user", "content": "Ship three red lamps to Oslo."},
         {"role": "assistant", "content": '{"item": "lamp", "count": 3, "colour": "red", "city": "Oslo"}'}]
QUESTIONS = ["Two green mugs for Porto, please.", "One blue folder to Lima.", "Send eleven white towels to Kyiv today.",
             "Hi"]


@pytest.fixture(scope="module")
def bank_model(tiny_model_dir):
    """The tiny base with two random LoRA adapters in a per-row bank, as the server holds them."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model
    from tunesmith.serve.adapters import inspect_adapter

    model = load_model(str(tiny_model_dir)).eval()
    bank = LoRABank(model)
    for seed, name in enumerate(["a", "b"]):
        torch.manual_seed(seed)
        peft = get_peft_model(load_model(str(tiny_model_dir)),
                              LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, r=4, lora_alpha=8,
                                         target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]))
        for p in peft.parameters():
            if p.requires_grad:
                p.data.normal_(std=0.3)
        folder = tiny_model_dir.parent / f"prompt-cache-{name}"
        peft.save_pretrained(folder)
        spec = inspect_adapter(name, folder)
        bank.add(name, spec.weights, spec.rank)
    return model, bank


def requests(tokenizer, convs, adapters):
    return [GenRequest(prompt_ids=prompt_ids(tokenizer, c), sink=None, max_tokens=NEW, text=False,
                       temperature=0.0, timeout_s=float("inf"), adapter=a) for c, a in zip(convs, adapters)]


def serve_one_at_a_time(model, bank, tokenizer, convs, adapters, cache):
    """What a server does with requests that arrive one after another: one engine, one request per step."""
    engine = Engine(model, tokenizer, bank, stop_token_ids(tokenizer), max_batch=4, prompt_cache=cache)
    replies = []
    for row in requests(tokenizer, convs, adapters):
        engine.run([row])
        replies.append(row.generated)
    return replies, engine


def test_later_requests_reuse_earlier_prompts_per_adapter_and_change_no_greedy_token(bank_model, tokenizer):
    model, bank = bank_model
    convs = [DEMOS + [{"role": "user", "content": q}] for q in QUESTIONS] * 2
    adapters = ["a"] * len(QUESTIONS) + [None, "b", "a", "b"]
    expected, plain = serve_one_at_a_time(model, bank, tokenizer, convs, adapters, None)
    assert len({tuple(r) for r in expected}) >= 4 and sum(map(len, expected)) > 3 * NEW     # the adapters matter
    got, engine = serve_one_at_a_time(model, bank, tokenizer, convs, adapters, PromptCache(64 << 20))
    assert got == expected
    prompts = [prompt_ids(tokenizer, c) for c in convs]
    shared = common_length(prompts[0], prompts[1], len(prompts[0]))
    assert shared > 60
    # Adapter a: the first request is prefilled whole, the next three (and the seventh) reuse the demos.
    # None and b start with nothing stored for them; the second b request reuses the first b's prompt.
    reused = engine.stats["reused_prompt_tokens"]
    assert engine.stats["prompt_cache_hits"] == 5
    assert reused >= 5 * shared and reused > len(prompts[6]) - 2    # the repeated question: all but its tail
    assert engine.stats["prefill_tokens"] == plain.stats["prefill_tokens"] - reused


def test_a_conversations_next_turn_prefills_only_the_new_turn_in_a_mixed_batch(bank_model, tokenizer):
    model, bank = bank_model
    first = DEMOS + [{"role": "user", "content": QUESTIONS[0]}]
    cache = PromptCache(64 << 20)
    engine = Engine(model, tokenizer, bank, stop_token_ids(tokenizer), max_batch=4, prompt_cache=cache)
    row = requests(tokenizer, [first], ["b"])[0]
    engine.run([row])
    follow = first + [{"role": "assistant", "content": tokenizer.decode(row.generated)},
                      {"role": "user", "content": "And the same again for Rome."}]
    followers = [follow, follow[:-1] + [{"role": "user", "content": "Make it four."}]]
    again = requests(tokenizer, followers, ["b", "b"])
    engine.run(again)                                  # one prefill group of two rows, one stored prompt
    assert engine.stats["prompt_cache_hits"] == 2
    assert engine.stats["reused_prompt_tokens"] >= 2 * len(row.prompt_ids)
    fresh = Engine(model, tokenizer, bank, stop_token_ids(tokenizer), max_batch=4)
    expected = requests(tokenizer, followers, ["b", "b"])
    fresh.run(expected)
    assert [r.generated for r in again] == [r.generated for r in expected]
    # Rows of different adapters in one group: nothing is reused (the keys differ per adapter).
    mixed = requests(tokenizer, followers, ["b", "a"])
    engine.run(mixed)
    assert engine.stats["prompt_cache_hits"] == 2


def test_the_store_is_bounded_least_recent_first_and_forgets_an_adapter():
    def layers(n):       # 2 layers, keys and values (1, 1, n, 4) in fp32: 64 n bytes
        return [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4)) for _ in range(2)]

    cache = PromptCache(max_bytes=64 * 100, minimum=4)
    cache.store(None, list(range(40)), layers(40))
    cache.store(None, [7] * 40, layers(40))
    assert len(cache) == 2 and cache.nbytes == 64 * 80
    found = cache.match(None, [list(range(30)) + [99]])
    assert found.tokens == list(range(30)) and found.layers[0][0].shape == (1, 1, 30, 4)
    assert cache.match("x", [list(range(30)) + [99]]) is None            # another adapter's keys
    assert cache.match(None, [list(range(3)) + [99]]) is None             # below the minimum
    assert cache.match(None, [list(range(40))]).tokens == list(range(39))  # the prompt keeps a token of its own
    cache.store(None, [5] * 40, layers(40))                              # over budget: [7]*40 was used least recently
    assert {k[1][0] for k in cache.entries} == {0, 5} and cache.nbytes <= 64 * 100
    cache.store(None, list(range(50)), layers(50))                       # covers range(40), which goes
    assert (None, tuple(range(40))) not in cache.entries and cache.nbytes <= 64 * 100
    cache.store(None, [1] * 200, layers(200))                            # larger than the whole store: not kept
    assert (None, (1,) * 200) not in cache.entries
    cache.store("x", [3] * 20, layers(20))
    cache.forget(None)
    assert [k[0] for k in cache.entries] == ["x"] and cache.nbytes == 64 * 20
