"""Repetition loops: what counts as one (read from references), and stopping generation at one
without changing any reply that does not loop."""

from __future__ import annotations

import pytest

from tunesmith.generation import generate_tokens
from tunesmith.generation.loops import MIN_REPEATS, LoopGuard, digit_token_ids, most_repeats, tail_repeats

CONVS = [[{"role": "user", "content": f"Write the schedule for team {i}."}] for i in range(6)] + \
        [[{"role": "user", "content": "Hello there, how are you doing on this fine morning?"}]]


def weeks(n: int, end: str = "]") -> str:
    return "[" + ", ".join(f'{{"week": {i}, "hours": {3 * i}}}' for i in range(1, n + 1)) + end


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_repeats_count_blocks_with_digits_ignored(tokenizer):
    digits = digit_token_ids(tokenizer)
    assert len(digits) >= 10                        # SmolLM2 spells numbers digit by digit
    assert most_repeats(ids(tokenizer, weeks(12)), digits) == 11   # 12 records: 11 back-to-back repeats of ', {...}'
    counting = ids(tokenizer, weeks(80, end=","))
    assert tail_repeats(counting, digits) >= 78
    prose = ids(tokenizer, "Tea is a drink made by steeping leaves in hot water, and people like it.")
    assert most_repeats(prose, digits) == 1
    # A short run of one token (a row of dashes) covers fewer than MIN_SPAN tokens: not a repeat.
    assert tail_repeats(ids(tokenizer, "a" + " -" * 10), digits) == 1


def test_the_limit_is_twice_the_longest_run_in_the_references(tokenizer):
    refs = [ids(tokenizer, weeks(12)), ids(tokenizer, weeks(5))]
    guard = LoopGuard.from_references(tokenizer, refs)
    assert guard.limit == 22
    assert not guard.looping(refs[0])
    assert not guard.looping(ids(tokenizer, weeks(23, end=",")))      # 22 repeats: allowed
    assert guard.looping(ids(tokenizer, weeks(40, end=",")))          # counting on past twice the references
    assert LoopGuard.from_references(tokenizer, [ids(tokenizer, "Paris.")]).limit == MIN_REPEATS


@pytest.fixture(scope="module")
def looping_model_dir(tokenizer, tmp_path_factory):
    """A random tiny model whose greedy replies fall into loops (" macrom macrom ..."): small weights
    make the next token depend little on the context."""
    from tests.conftest import make_tiny_llama

    return make_tiny_llama(tokenizer, tmp_path_factory.mktemp("looping"), seed=1, initializer_range=0.05)


@pytest.fixture(scope="module")
def tiny(looping_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(looping_model_dir))


def test_stopping_loops_cuts_only_the_looping_replies(tiny, tokenizer):
    """A random tiny model falls into loops under greedy decoding; the guard stops those rows where
    it notices them and leaves every other reply token for token as it was."""
    plain = generate_tokens(tiny, tokenizer, CONVS, max_new_tokens=96, batch_size=4)
    guard = LoopGuard.from_references(tokenizer, [])
    guarded = generate_tokens(tiny, tokenizer, CONVS, max_new_tokens=96, batch_size=4, loop_guard=guard)
    digits = guard.digits
    looping = [i for i, reply in enumerate(plain) if tail_repeats(reply, digits) > guard.limit]
    assert looping, "the tiny model should loop on some prompt"
    assert guard.stopped == sum(len(g) < len(p) for g, p in zip(guarded, plain)) >= 1
    for g, p in zip(guarded, plain):
        assert p[:len(g)] == g                      # a prefix: the same tokens up to the stop
        if len(g) < len(p):
            assert tail_repeats(g, digits) > guard.limit and len(g) % 8 == 0
            assert len(p) - len(g) >= 8             # the loop went on without the guard
    # A budget the loops never reach: nothing is stopped, nothing changes.
    short_guard = LoopGuard.from_references(tokenizer, [])
    assert generate_tokens(tiny, tokenizer, CONVS, max_new_tokens=16, batch_size=4, loop_guard=short_guard) == \
        generate_tokens(tiny, tokenizer, CONVS, max_new_tokens=16, batch_size=4)
    assert short_guard.stopped == 0


def test_prompt_tuning_replies_are_stopped_too(looping_model_dir, tokenizer):
    """Prompt-learning adapters (the engine's virtual-token prefill) take the same guard."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.methods import method_options, prepare_method

    prepared = prepare_method(AutoModelForCausalLM.from_pretrained(str(looping_model_dir)),
                              method_options(name="prompt", num_virtual_tokens=4), 1e-2)
    model = prepared.model.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    plain = generate_tokens(model, tokenizer, CONVS, max_new_tokens=96, batch_size=4)
    guard = LoopGuard.from_references(tokenizer, [])
    guarded = generate_tokens(model, tokenizer, CONVS, max_new_tokens=96, batch_size=4, loop_guard=guard)
    assert guard.stopped == sum(len(g) < len(p) for g, p in zip(guarded, plain))
    assert all(p[:len(g)] == g for g, p in zip(guarded, plain))
    assert guard.stopped >= 1
