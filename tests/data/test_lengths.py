"""Lengths read from the data (data/lengths.py): `data.max_len: auto` and `eval.max_new_tokens: auto`
resolve to the numbers their rules give, and each objective measures examples as it later drops them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.lengths import (
    model_context,
    new_tokens_budget,
    resolve_max_len,
    resolve_max_new_tokens,
)
from tunesmith.data.schema import Sample
from tunesmith.data.tokenize import tokenize_all, tokenize_feedback, tokenize_pairs
from tunesmith.train.objectives import get_objective


@pytest.mark.parametrize("lengths,resolved,longer", [
    (list(range(1, 101)), 128, 0),              # the 99th of 100 is 99 tokens -> 128
    ([64] * 99 + [1000], 64, 1),                # 99 % fit in 64: the one long example is the 1 % let go
    ([64] * 98 + [1000, 1000], 1024, 0),        # 98 % is not enough: the long ones set the length
    ([65] * 100, 128, 0),                       # one token over a multiple of 64 takes the next one
    ([700] * 95 + [760] * 5, 768, 0),
])
def test_auto_max_len_is_the_smallest_multiple_of_64_holding_99_percent(lengths, resolved, longer):
    found = resolve_max_len("auto", lengths, context=8192)
    assert (found.resolved, found.longer, found.capped) == (resolved, longer, False)
    assert found.resolved % 64 == 0
    assert sum(n <= found.resolved for n in lengths) / len(lengths) >= 0.99
    assert found.coverage == (len(lengths) - longer) / len(lengths)
    assert found.warning() is None


def test_auto_max_len_is_capped_by_the_context_and_says_so_loudly():
    lengths = [100] * 90 + [700] * 10
    found = resolve_max_len("auto", lengths, context=512)
    assert (found.resolved, found.capped, found.longer, found.p99, found.longest) == (512, True, 10, 700, 700)
    assert found.coverage == 0.9
    assert found.as_dict() == {"setting": "auto", "resolved": 512, "coverage": 0.9, "examples": 100, "longer": 10,
                               "p99": 700, "longest": 700, "context": 512, "capped": True}
    warning = found.warning("drop")
    assert "10 of 100 training examples (10.0%" in warning and "dropped" in warning
    assert "tunesmith data clean --max-tokens 512" in warning and "data.overlong: truncate" in warning
    assert "truncated" in found.warning("truncate")
    assert "capped by the model's context of 512 tokens" in found.describe()
    # Capped, but 99 % still fit: no warning.
    assert resolve_max_len("auto", [100] * 99 + [700], context=512).warning() is None


def test_an_explicit_max_len_is_kept_and_no_data_falls_back():
    found = resolve_max_len(256, [1000] * 5, context=128)
    assert (found.resolved, found.auto, found.as_dict()) == (256, False, {"setting": 256, "resolved": 256})
    assert found.warning() is None and found.describe() == "data.max_len: 256"
    assert resolve_max_len("auto", [], context=None).resolved == 512
    assert resolve_max_len("auto", [], context=300).resolved == 300


@pytest.mark.parametrize("longest,budget", [(400, 512), (10, 32), (64, 80), (100, 128), (1, 32)])
def test_auto_max_new_tokens_is_the_longest_reference_with_a_margin(longest, budget):
    assert new_tokens_budget(longest) == budget
    found = resolve_max_new_tokens("auto", [1, longest, longest // 2], context=8192)
    assert (found.resolved, found.longest_reference, found.references, found.capped) == (budget, longest, 3, False)
    assert found.resolved >= 1.25 * longest and found.resolved >= longest + 16 and found.resolved % 16 == 0


def test_auto_max_new_tokens_caps_and_explicit_numbers_stay():
    assert (resolve_max_new_tokens("auto", [2000]).resolved, resolve_max_new_tokens("auto", [2000]).capped) == (2048, True)
    assert resolve_max_new_tokens("auto", [1000], context=1024).resolved == 1024
    assert resolve_max_new_tokens("auto", []).resolved == 256            # nothing to measure
    assert resolve_max_new_tokens(8, [2000]).resolved == 8


def test_model_context_reads_the_config_and_a_sane_tokenizer_limit():
    config = SimpleNamespace(max_position_embeddings=1024)
    assert model_context(config, SimpleNamespace(model_max_length=int(1e30))) == 1024   # 1e30: no limit known
    assert model_context(config, SimpleNamespace(model_max_length=512)) == 512
    assert model_context(SimpleNamespace(config=config)) == 1024                         # a loaded model
    assert model_context(None, SimpleNamespace(model_max_length=2048)) == 2048
    assert model_context(None, None) is None


LONG = " ".join(f"word{i}" for i in range(60))


def _chats():
    return [Sample(messages=[{"role": "user", "content": f"q{i} " + LONG[: 20 * i]},
                             {"role": "assistant", "content": f"answer {i} " * (i + 1)}]) for i in range(8)]


def test_sft_lengths_are_the_lengths_tokenize_drops_by(tokenizer):
    samples = [*_chats(), Sample(text=LONG)]
    cfg = DataConfig(system_prompt="Be brief.")
    lengths = get_objective("sft").lengths(tokenizer, samples, cfg)
    _, stats = tokenize_all(tokenizer, samples, max_len=10**6, system_prompt="Be brief.")
    assert lengths == stats.lengths
    cut = sorted(lengths)[4]
    _, stats = tokenize_all(tokenizer, samples, max_len=cut, system_prompt="Be brief.")
    assert stats.dropped_overlong == sum(n > cut for n in lengths) == 4


def test_pair_and_feedback_lengths_are_the_lengths_tokenize_drops_by(tokenizer):
    pairs = [Sample(messages=[{"role": "user", "content": f"Pick {i}. " + LONG[: 30 * i]}],
                    chosen="red " * (i + 1), rejected="blue " * (8 - i)) for i in range(8)]
    cfg = DataConfig()
    dpo = get_objective("dpo").lengths(tokenizer, pairs, cfg)
    kept, _ = tokenize_pairs(tokenizer, pairs, max_len=10**6)
    assert dpo == [max(len(p.chosen), len(p.rejected)) for p in kept]   # the longer side of each pair
    cut = sorted(dpo)[5]
    assert tokenize_pairs(tokenizer, pairs, max_len=cut)[1].dropped_overlong == sum(n > cut for n in dpo) == 2
    kto = get_objective("kto").lengths(tokenizer, pairs, cfg)
    answers, _ = tokenize_feedback(tokenizer, pairs, max_len=10**6)
    assert kto == [len(a) for a in answers] and len(kto) == 16            # one per answer


def test_an_unresolved_auto_is_a_clear_error_not_a_type_error(tokenizer):
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="resolved from the training data before tokenizing"):
        get_objective("sft").tokenize(tokenizer, _chats(), DataConfig())
    with pytest.raises(ConfigError, match="resolve_data_max_len"):
        get_objective("dpo").tokenize(tokenizer, [Sample(messages=[{"role": "user", "content": "q"}], chosen="a",
                                                         rejected="b")], DataConfig())
