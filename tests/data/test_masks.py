"""Assistant-only loss masks, checked token by token.

The expected labels are built independently of `assistant_spans` (which renders conversation
prefixes): the rendered conversation is written out by hand as pieces marked trained or not, and
exactly the tokens of trained pieces (each assistant reply plus its end-of-turn token, never the
separator after it) must carry labels.
"""

from __future__ import annotations

import copy

import pytest

from tunesmith.data.schema import Sample
from tunesmith.data.templates import apply_named_template
from tunesmith.data.tokenize import IGNORE, token_lengths, tokenize_all, tokenize_sample

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Another one, bigger?"},
    {"role": "assistant", "content": "Eleven, then 13."},
]


def _pieces_chatml(eot="<|im_end|>"):
    return [
        ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a prime.<|im_end|>\n<|im_start|>assistant\n", False),
        ("Seven." + eot, True),
        ("\n<|im_start|>user\nAnother one, bigger?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Eleven, then 13." + eot, True),
        ("\n", False),
    ]


def _pieces_llama3(bos):
    return [
        (f"{bos}<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
         "Name a prime.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", False),
        ("Seven.<|eot_id|>", True),
        ("<|start_header_id|>user<|end_header_id|>\n\nAnother one, bigger?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", False),
        ("Eleven, then 13.<|eot_id|>", True),
    ]


def _pieces_alpaca(eos):
    return [
        ("You are terse.\n\n### Instruction:\nName a prime.\n\n### Response:\n", False),
        (f"Seven.{eos}", True),
        ("\n\n### Instruction:\nAnother one, bigger?\n\n### Response:\n", False),
        (f"Eleven, then 13.{eos}", True),
        ("\n\n", False),
    ]


def _expected(tok, pieces):
    """Ids of the whole rendering; a token is trained when it lies inside a trained piece.

    Pieces are not tokenized one by one: BPE may split whitespace differently at a string's end
    ("\n\n" is one token there, two before a word), so the boundaries are checked instead: no
    token may straddle one.
    """
    text = "".join(p for p, _ in pieces)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    bounds, at = [], 0
    for piece, trained in pieces:
        bounds.append((at, at + len(piece), trained))
        at += len(piece)
    labels = []
    for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
        (trained,) = [tr for a, b, tr in bounds if a <= s < b]
        assert not any(s < a < e for a, _, _ in bounds), f"token {tok.decode([t])!r} straddles a turn boundary"
        labels.append(t if trained else IGNORE)
    return enc["input_ids"], labels


def _with_template(tokenizer, name):
    tok = copy.deepcopy(tokenizer)  # the fixture is shared: templates must not leak into other tests
    apply_named_template(tok, name)
    return tok


@pytest.mark.parametrize("template", ["auto", "chatml", "llama3", "alpaca"])
def test_multi_turn_masks_token_by_token(tokenizer, template):
    tok = _with_template(tokenizer, template)
    pieces = {"auto": _pieces_chatml, "chatml": _pieces_chatml,
              "llama3": lambda: _pieces_llama3(tok.bos_token), "alpaca": lambda: _pieces_alpaca(tok.eos_token)}[template]()
    assert tok.apply_chat_template(CHAT, tokenize=False) == "".join(p for p, _ in pieces)
    ids, labels = tokenize_sample(tok, Sample(messages=CHAT))
    exp_ids, exp_labels = _expected(tok, pieces)
    assert ids == exp_ids
    assert labels == exp_labels
    # The end-of-turn marker is one token and it is trained: the model learns to stop.
    eot = {"llama3": "<|eot_id|>"}.get(template, tok.eos_token if template == "alpaca" else "<|im_end|>")
    eot_id = tok.convert_tokens_to_ids(eot)
    trained_eots = [i for i, (t, lab) in enumerate(zip(ids, labels)) if t == eot_id and lab != IGNORE]
    assert len(trained_eots) == 2
    # Decoding the trained runs gives back exactly the two replies with their end-of-turn tokens.
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    assert [tok.decode(r) for r in runs] == [f"Seven.{eot}", f"Eleven, then 13.{eot}"]


def test_named_templates_add_single_special_tokens(tokenizer):
    tok = _with_template(tokenizer, "llama3")
    for marker in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1
    assert len(tok) == len(tokenizer) + 3


def test_default_system_prompt_is_never_trained(tokenizer):
    """SmolLM2's template inserts its own system prompt when there is none; it gets no labels."""
    chat = CHAT[1:3]
    ids, labels = tokenize_sample(tokenizer, Sample(messages=chat))
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    trained = [t for t, lab in zip(ids, labels) if lab != IGNORE]
    assert tokenizer.decode(trained) == "Seven.<|im_end|>"


def test_train_on_inputs_labels_everything(tokenizer):
    ids, labels = tokenize_sample(tokenizer, Sample(messages=CHAT), train_on_inputs=True)
    assert labels == ids and len(ids) > 30


def test_targets_are_shifted_per_example_and_stats(tokenizer):
    samples = [Sample(messages=CHAT), Sample(text="Plain domain text."), Sample(messages=CHAT[:3] + [
        {"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "ok"}])]
    out, stats = tokenize_all(tokenizer, samples, max_len=128, overlong="drop")
    ids, labels = tokenize_sample(tokenizer, samples[0])
    assert out[0].input_ids == ids and out[0].targets == labels[1:] + [IGNORE]
    # Raw text trains on every token and ends with EOS, so continued pre-training learns document ends.
    assert out[1].input_ids[-1] == tokenizer.eos_token_id and out[1].n_targets == len(out[1]) - 1
    assert (stats.examples, stats.dropped_overlong, stats.truncated) == (2, 1, 0)
    out, stats = tokenize_all(tokenizer, samples, max_len=128, overlong="truncate")
    assert (stats.examples, stats.truncated) == (3, 1) and len(out[2]) == 128
    # token_lengths (batched, used by inspect and clean) agrees with full tokenization.
    assert token_lengths(tokenizer, samples) == [len(tokenize_sample(tokenizer, s)[0]) for s in samples]


def test_preference_pairs_train_on_the_chosen_answer(tokenizer):
    sample = Sample(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "Pick."}],
                    chosen="Good answer.", rejected="Bad.")
    ids, labels = tokenize_sample(tokenizer, sample)
    assert tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE]) == "Good answer.<|im_end|>"
