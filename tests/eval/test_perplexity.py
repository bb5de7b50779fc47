"""Perplexity equals exp(mean NLL) computed by hand on the tiny model, for every window/stride setting."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.data.schema import Sample
from tunesmith.data.tokenize import IGNORE, tokenize_sample
from tunesmith.errors import ConfigError
from tunesmith.eval.perplexity import perplexity, windows

TEXTS = ["The water cycle moves water between the oceans, the air and the land, again and again.",
         "Bread rises because yeast releases carbon dioxide into the dough, which gluten traps as bubbles. " * 2]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from tunesmith.models import load_model

    return load_model(str(tiny_model_dir)).eval()


def token_logprob(model, context: list[int], target: int) -> float:
    """log p(target | context), one forward pass on exactly that context: the hand computation."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context])).logits[0, -1].double()
    return (logits[target] - torch.logsumexp(logits, dim=0)).item()


def hand_nll(model, ids: list[int], scored: list[bool], window: int, stride: int) -> tuple[float, int]:
    """Each target t scored once, with the context the first window reaching it gives: ids[begin:t]."""
    total, count = 0.0, 0
    for t in range(1, len(ids)):
        if not scored[t]:
            continue
        # The window that scores t is the first whose end passes t; its start bounds the context.
        begin = 0
        while begin + window <= t:
            begin += stride
        if begin == t:  # t is that window's first position; the previous window (ending at t) cannot reach it
            continue
        total -= token_logprob(model, ids[begin:t], ids[t])
        count += 1
    return total, count


def test_windows_score_every_token_once():
    for n, window, stride in [(10, 4, 2), (10, 4, 4), (37, 8, 3), (5, 16, 8), (16, 16, 16), (17, 16, 1), (40, 8, 8)]:
        seen = []
        for begin, end, first in windows(n, window, stride):
            assert end - begin <= window and first > begin
            seen += list(range(first, end))
        if stride < window:
            assert seen == list(range(1, n)), (n, window, stride)  # every target once, in order
        else:
            # Disjoint windows: a window's first token has no context inside it and goes unscored.
            starts = set(range(window, n, window))
            assert seen == [t for t in range(1, n) if t not in starts], (n, window, stride)


@pytest.mark.parametrize("window,stride", [(512, 256), (12, 12), (16, 5), (8, 1)])
def test_raw_text_perplexity_equals_hand_computation(tiny, tokenizer, window, stride):
    samples = [Sample(text=t) for t in TEXTS]
    result = perplexity(tiny, tokenizer, samples, window=window, stride=stride, batch_size=3)
    total, count = 0.0, 0
    for s in samples:
        ids, labels = tokenize_sample(tokenizer, s)
        nll, c = hand_nll(tiny, ids, [True] * len(ids), window, stride)
        total, count = total + nll, count + c
    assert result.tokens == count
    # fp32 model vs float64 hand log-softmax: agree to ~1e-5 relative on the summed NLL.
    assert result.mean_nll == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    if window >= 512:  # one window: every token after the first, plus the end-of-sequence token, is scored
        assert count == sum(len(tokenize_sample(tokenizer, s)[0]) - 1 for s in samples)


def test_full_window_equals_cross_entropy_of_one_forward(tiny, tokenizer):
    ids, _ = tokenize_sample(tokenizer, Sample(text=TEXTS[1]))
    with torch.no_grad():
        logits = tiny(input_ids=torch.tensor([ids])).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    result = perplexity(tiny, tokenizer, [Sample(text=TEXTS[1])], window=1024, stride=512)
    assert result.mean_nll == pytest.approx(expected, rel=1e-5)


def test_response_only_perplexity_scores_assistant_tokens_only(tiny, tokenizer):
    chats = [Sample(messages=[{"role": "user", "content": f"What is {a} plus {b}?"},
                              {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]) for a, b in [(2, 3), (10, 7)]]
    result = perplexity(tiny, tokenizer, chats, window=512, stride=256)
    total, count = 0.0, 0
    for s in chats:
        ids, labels = tokenize_sample(tokenizer, s)
        scored = [lab != IGNORE for lab in labels]
        assert 0 < sum(scored) < len(ids) // 2  # the prompt (and template) tokens really are excluded
        nll, c = hand_nll(tiny, ids, scored, 512, 256)
        total, count = total + nll, count + c
    assert result.tokens == count
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    whole = perplexity(tiny, tokenizer, [Sample(text=s.messages[0]["content"] + s.messages[1]["content"]) for s in chats])
    assert whole.tokens > result.tokens


def test_bad_window_settings_are_config_errors():
    with pytest.raises(ConfigError, match="stride"):
        windows(10, 4, 5)
    with pytest.raises(ConfigError, match="window"):
        windows(10, 1, 1)


CHATS = [Sample(messages=[{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]) for a, b in [(2, 3), (10, 7), (1, 1)]]


def peft_virtual_token_model(tiny_model_dir, kind: str):
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(3)
    config = (PromptTuningConfig if kind == "prompt" else PrefixTuningConfig)(num_virtual_tokens=6, task_type="CAUSAL_LM")
    model = get_peft_model(load_model(str(tiny_model_dir)), config).eval()
    if kind == "prefix":
        # peft starts prefixes near zero; make them large enough to move the logits visibly.
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 1.0)
    return model


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_virtual_token_adapters_response_perplexity_equals_hand_computation(tiny_model_dir, tokenizer, kind):
    model = peft_virtual_token_model(tiny_model_dir, kind)
    total, count = 0.0, 0
    for s in CHATS:
        ids, labels = tokenize_sample(tokenizer, s)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        if kind == "prompt":
            assert logits.shape[0] == len(ids) + 6  # the virtual tokens' logits come first
        logits = logits[-len(ids):]
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(1, len(ids)):
            if labels[t] != IGNORE:
                total -= logp[t - 1, ids[t]].item()
                count += 1
    # Batches of 2 with right padding: the virtual tokens sit before every row, padding after.
    result = perplexity(model, tokenizer, CHATS, window=512, stride=256, batch_size=2)
    assert result.tokens == count
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    with model.disable_adapter():
        base = perplexity(model, tokenizer, CHATS, window=512, stride=256, batch_size=2).perplexity
    assert abs(result.perplexity - base) > 1e-3 * base  # the adapter is really on in the scored run


def test_bf16_scoring_holds_frozen_weights_in_bf16_and_gives_what_autocast_alone_gives(tiny, tokenizer, monkeypatch):
    """perplexity.sequence_nll and preference.sequence_logps cast the frozen weights (and the tied head)
    once per call instead of letting autocast cast them per batch: the same rounding, the same numbers."""
    import contextlib

    from tunesmith.eval import perplexity as ppl_module
    from tunesmith.eval import preference as pref_module
    from tunesmith.train import precision
    from tunesmith.train.precision import frozen_linears_in

    items = [tokenize_sample(tokenizer, Sample(text=t)) for t in TEXTS]
    items = [(ids, [lab != IGNORE for lab in labels]) for ids, labels in items]
    embedding = tiny.get_input_embeddings().weight
    seen = []

    def spy(model, dtype, restore=True):
        seen.append(dtype)
        return frozen_linears_in(model, dtype, restore)

    monkeypatch.setattr(precision, "frozen_linears_in", spy)      # inference_precision's
    held = (ppl_module.sequence_nll(tiny, items, window=64, stride=32, batch_size=2, precision="bf16"),
            pref_module.sequence_logps(tiny, items, batch_size=2, precision="bf16"))
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert tiny.lm_head.weight is embedding and embedding.dtype == torch.float32     # restored, tied again
    monkeypatch.setattr(precision, "frozen_linears_in", lambda model, dtype, restore=True: contextlib.nullcontext())
    autocast_only = (ppl_module.sequence_nll(tiny, items, window=64, stride=32, batch_size=2, precision="bf16"),
                     pref_module.sequence_logps(tiny, items, batch_size=2, precision="bf16"))
    assert held == autocast_only
    fp32 = pref_module.sequence_logps(tiny, items, batch_size=2, precision="fp32")
    assert held[1] != fp32                   # bf16 really ran: the numbers differ from fp32's
