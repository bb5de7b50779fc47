"""Offline generation through the engine: the same tokens as the paths it replaced (HF `generate` for
plain and LoRA models, the lockstep virtual-token decoder for prompt / prefix tuning), rows joining
and leaving the batch; speculative decoding with prompt lookup that changes no greedy token; seeded
sampling that does not depend on the batch."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tunesmith.data.tokenize import prompt_ids
from tunesmith.errors import UserError
from tunesmith.generation import Engine, GenRequest, VirtualTokenDecoder, generate_tokens, stop_token_ids
from tunesmith.generation.batching import left_pad, pad_id
from tunesmith.generation.loops import LoopGuard
from tunesmith.generation.sampling import generate_kwargs, sampler
from tunesmith.generation.speculate import JUDGE_AFTER, DraftModel, PromptLookup, check_same_vocabulary
from tunesmith.generation.stops import cut_at_stop
from tunesmith.generation.virtual_tokens import virtual_token_kind
from tunesmith.methods import method_options, prepare_method

NEW = 24
CONVS = [[{"role": "user", "content": "Hi"}],
         [{"role": "user", "content": "Hello there, how are you doing on this fine morning?"}],
         [{"role": "user", "content": "Copy this: the code for item 7 is ABC-7-XYZ and the colour is blue."}],
         [{"role": "user", "content": "Name three colours of the rainbow, please."}],
         [{"role": "user", "content": "Code for item 12?"}]]
METHODS = {"none": None, "lora": dict(r=4, alpha=8, dropout=0.0), "prompt": dict(num_virtual_tokens=5),
           "prefix": dict(num_virtual_tokens=5)}


@pytest.fixture(scope="module")
def looping_dir(tokenizer, tmp_path_factory):
    """Small weights: greedy replies repeat themselves, so prompt lookup finds drafts the model accepts."""
    from tests.conftest import make_tiny_llama

    return make_tiny_llama(tokenizer, tmp_path_factory.mktemp("looping-engine"), seed=1, initializer_range=0.05)


def model_with(model_dir, name, std: float | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if METHODS[name] is None:
        return model.eval()
    model = prepare_method(model, method_options(name=name, **METHODS[name]), 1e-2).model
    torch.manual_seed(11)
    with torch.no_grad():   # random adapter weights, so the adapter changes the replies
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=std or (0.5 if name == "lora" else 1.0))
    return model.eval()


@torch.no_grad()
def todays_path(model, tokenizer, convs, new=NEW) -> list[list[int]]:
    """Greedy replies as offline generation made them before the engine ran it: one left-padded batch
    through `model.generate`, or through the virtual-token decoder for prompt-learning adapters."""
    ids, mask = left_pad([prompt_ids(tokenizer, c) for c in convs], pad_id(tokenizer))
    stops = stop_token_ids(tokenizer)
    kind = virtual_token_kind(model)
    if kind:
        out = VirtualTokenDecoder(model, kind)(ids, mask, new, stops, pad_id(tokenizer), sampler(0.0))
    else:
        out = model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs(new, pad_id(tokenizer), stops, 0.0))
        out = out[:, ids.shape[1]:]
    return [cut_at_stop(row, stops) for row in out.tolist()]


@pytest.mark.parametrize("name", list(METHODS))
def test_engine_replies_equal_todays_path_token_by_token(name, tiny_model_dir, tokenizer):
    model = model_with(tiny_model_dir, name)
    expected = todays_path(model, tokenizer, CONVS)
    assert sum(map(len, expected)) > 2 * NEW
    # batch 2 of 5 prompts: rows join the running batch as others finish.
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=2) == expected
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=len(CONVS)) == expected
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=2, prompt_lookup=4) == expected


def run_engine(model, tokenizer, convs, lookup=None, max_batch=2, temperatures=None, new=NEW, draft=None):
    rows = [GenRequest(prompt_ids=prompt_ids(tokenizer, c), sink=None, max_tokens=new, text=False, seed=i,
                       temperature=(temperatures or [0.0] * len(convs))[i], timeout_s=float("inf"))
            for i, c in enumerate(convs)]
    engine = Engine(model, tokenizer, None, stop_token_ids(tokenizer), max_batch=max_batch, lookup=lookup, draft=draft)
    engine.run(rows)
    return [r.generated for r in rows], engine, rows


@pytest.mark.parametrize("name", ["none", "lora", "prompt"])
def test_prompt_lookup_changes_no_greedy_token(name, looping_dir, tokenizer):
    model = model_with(looping_dir, name, std=0.1)
    plain, _, _ = run_engine(model, tokenizer, CONVS)
    with torch.no_grad(), getattr(model, "disable_adapter", contextlib.nullcontext)():
        assert name == "none" or run_engine(model, tokenizer, CONVS)[0] != plain      # the adapter matters
    fast, engine, _ = run_engine(model, tokenizer, CONVS, lookup=PromptLookup(max_draft=6))
    assert fast == plain
    assert engine.stats["accepted_draft_tokens"] >= 20                 # speculation really ran and paid
    assert engine.stats["decode_steps"] < sum(map(len, plain)) - len(CONVS)


class WrongTail(PromptLookup):
    """Prompt lookup with the last draft token replaced: every verification rejects something."""

    def draft(self, row):
        draft = super().draft(row)
        return draft[:-1] + [draft[-1] + 1] if draft else draft


def test_rejected_drafts_leave_no_trace(looping_dir, tokenizer):
    """Rejected draft tokens stay in the KV cache as masked columns; later tokens must not see them,
    in greedy rows and in the sampled rows beside them (which sample speculatively: their draws differ
    from plain sampling's, the same seed gives the same reply)."""
    model = model_with(looping_dir, "lora")
    temps = [0.0, 1.0, 0.0, 0.7, 0.0]
    greedy = [i for i, t in enumerate(temps) if t == 0]
    plain, _, _ = run_engine(model, tokenizer, CONVS, temperatures=temps, max_batch=3)
    got, engine, _ = run_engine(model, tokenizer, CONVS, temperatures=temps, max_batch=3,
                                lookup=WrongTail(max_draft=4, min_gain=0.0))
    again, _, _ = run_engine(model, tokenizer, CONVS, temperatures=temps, max_batch=3,
                             lookup=WrongTail(max_draft=4, min_gain=0.0))
    assert [got[i] for i in greedy] == [plain[i] for i in greedy] and got == again
    assert 0 < engine.stats["accepted_draft_tokens"] < engine.stats["drafted_tokens"]


def test_low_acceptance_switches_speculation_off(looping_dir, tokenizer):
    class Garbage(PromptLookup):
        def draft(self, row):
            return [7] * 4 if row.speculating else []

    model = model_with(looping_dir, "none")
    plain, _, _ = run_engine(model, tokenizer, CONVS[:2])
    got, engine, rows = run_engine(model, tokenizer, CONVS[:2], lookup=Garbage(max_draft=4))
    assert got == plain
    assert not any(r.speculating for r in rows)
    assert all(r.verifications == JUDGE_AFTER and r.drafted == 4 * JUDGE_AFTER and r.accepted_drafts == 0 for r in rows)


def test_prompt_lookup_drafts_what_followed_the_latest_match():
    row = GenRequest(prompt_ids=[5, 6, 7, 8, 9, 5, 6, 1, 2, 3], sink=None, temperature=0.0, max_tokens=50)
    lookup = PromptLookup(max_draft=3)
    row.generated = [5, 6]
    assert lookup.draft(row) == [1, 2, 3]          # the 2-gram (5, 6): its latest earlier occurrence
    row.generated = [9, 5, 6, 7]
    assert lookup.draft(row) == [8, 9, 5]          # the 3-gram (5, 6, 7), found at the start
    row.generated = [42]
    assert lookup.draft(row) == []
    row.generated, row.sampled, row.max_tokens = [5, 6], 2, 4
    assert lookup.draft(row) == [1]                # never past max_tokens
    row.speculating = False
    assert lookup.draft(row) == []                 # switched off


def test_loop_guard_and_prompt_lookup_together(looping_dir, tokenizer):
    model = model_with(looping_dir, "none")
    guard, fast_guard = LoopGuard.from_references(tokenizer, []), LoopGuard.from_references(tokenizer, [])
    plain = generate_tokens(model, tokenizer, CONVS, max_new_tokens=96, batch_size=2, loop_guard=guard)
    fast = generate_tokens(model, tokenizer, CONVS, max_new_tokens=96, batch_size=2, loop_guard=fast_guard,
                           prompt_lookup=8)
    assert fast == plain and fast_guard.stopped == guard.stopped >= 1


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_model_dir, tokenizer):
    model = model_with(tiny_model_dir, "none")
    runs = [generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, batch_size=b, temperature=1.0, seed=3)
            for b in (1, 2, 5)]
    assert runs[0] == runs[1] == runs[2]
    assert generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW, temperature=1.0, seed=4) != runs[0]
    assert runs[0] != generate_tokens(model, tokenizer, CONVS, max_new_tokens=NEW)


def test_a_draft_model_changes_no_greedy_token(tiny_model_dir, looping_dir, tokenizer):
    """The base drafting for its LoRA fine-tune (most drafts accepted), and an unrelated model (most
    rejected, so rows switch speculation off): plain decoding's tokens either way, with a sampled row beside them."""
    from transformers import AutoModelForCausalLM

    tuned = model_with(looping_dir, "lora", std=0.1)
    base = AutoModelForCausalLM.from_pretrained(str(looping_dir)).eval()
    temps = [0.0, 0.0, 0.9, 0.0, 0.0]
    plain, _, _ = run_engine(tuned, tokenizer, CONVS, temperatures=temps, max_batch=3)
    greedy = [i for i, t in enumerate(temps) if t == 0]
    got, engine, _ = run_engine(tuned, tokenizer, CONVS, temperatures=temps, max_batch=3, draft=DraftModel(base, max_draft=4))
    assert [got[i] for i in greedy] == [plain[i] for i in greedy]
    assert engine.stats["accepted_draft_tokens"] > 0.5 * engine.stats["drafted_tokens"] > 10
    unrelated = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    got, engine, rows = run_engine(tuned, tokenizer, CONVS, temperatures=temps, max_batch=3,
                                   draft=DraftModel(unrelated, max_draft=4, min_gain=4.0))
    assert [got[i] for i in greedy] == [plain[i] for i in greedy]
    assert not any(r.speculating for r in rows) and engine.stats["drafted_tokens"] > 0
    assert generate_tokens(tuned, tokenizer, CONVS, max_new_tokens=NEW, batch_size=2, draft_model=base) == \
        generate_tokens(tuned, tokenizer, CONVS, max_new_tokens=NEW, batch_size=2)


def test_a_draft_model_with_another_vocabulary_is_a_user_error(tokenizer):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    other.add_tokens(["<extra-token>"])
    with pytest.raises(UserError, match="'small-draft' has another vocabulary than 'big-target'"):
        check_same_vocabulary(tokenizer, other, "big-target", "small-draft")
    check_same_vocabulary(tokenizer, AutoTokenizer.from_pretrained(tokenizer.name_or_path), "a", "b")   # same: fine


@torch.no_grad()
def test_emulated_fine_tuning_follows_the_formula(tiny_model_dir, tokenizer, tmp_path):
    """Every step's log-probs equal log_softmax(log p_large + beta (log p_tuned - log p_base)) computed
    from no-cache forwards of the three models (the small base = the tuned model with its adapter off), to 1e-5.
    In float64, so that what is compared is the formula, the caches and the masks, not fp32 rounding."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_tiny_llama
    from tunesmith.generation.eft import EmulatedFineTune

    tuned = model_with(tiny_model_dir, "lora").double()
    large = AutoModelForCausalLM.from_pretrained(str(make_tiny_llama(tokenizer, tmp_path / "large", layers=3, seed=5)))
    large = large.double().eval()
    convs, new, beta = CONVS[:3], 6, 0.7
    eft = EmulatedFineTune(large, beta)
    eft.trace = []
    rows = [GenRequest(prompt_ids=prompt_ids(tokenizer, c), sink=None, max_tokens=new, temperature=0.0, text=False,
                       timeout_s=float("inf"), index=i) for i, c in enumerate(convs)]
    rows[1].eft_beta = 2.0                                 # a request's own beta
    Engine(tuned, tokenizer, None, [], max_batch=3, eft=eft).run(rows)   # no stop tokens: every row runs `new` steps

    def logprobs(model, seq):
        return torch.log_softmax(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].double(), -1)

    checked = 0
    for step, combined in enumerate(eft.trace):              # (3, V) per step: prefill, then decode steps
        for i, row in enumerate(rows):
            seq = row.prompt_ids + row.generated[:step]
            with tuned.disable_adapter():
                base = logprobs(tuned, seq)
            b = 2.0 if i == 1 else beta
            expected = torch.log_softmax(logprobs(large, seq) + b * (logprobs(tuned, seq) - base), -1)
            torch.testing.assert_close(combined[i], expected, atol=1e-5, rtol=0)
            assert row.generated[step] == int(expected.argmax())
            checked += 1
    assert checked == len(rows) * new
    # beta 0 is the large base; the adapter alone would answer differently.
    assert generate_tokens(tuned, tokenizer, convs, max_new_tokens=new, eft_large=large, eft_beta=0.0) == \
        generate_tokens(large, tokenizer, convs, max_new_tokens=new)


@pytest.mark.parametrize("helper", ["draft", "eft"])
def test_a_bf16_engine_holds_its_draft_and_eft_models_in_bf16(helper, tiny_model_dir, looping_dir, tokenizer):
    """Under bf16 the engine runs every model of a step as it runs its own (inference_precision: frozen
    weights cast once, not per pass by autocast), and gives the fp32 weights back after."""
    from tunesmith.generation.eft import EmulatedFineTune
    from tunesmith.generation.speculate import load_draft_model

    tuned = model_with(looping_dir, "lora", std=0.1)
    other = load_draft_model(str(tiny_model_dir), tokenizer, "the target")
    layer = other.model.layers[0].mlp.down_proj
    seen = []
    rows = [GenRequest(prompt_ids=prompt_ids(tokenizer, c), sink=lambda e: seen.append(layer.weight.dtype),
                       max_tokens=6, temperature=0.0, text=False, timeout_s=float("inf"), index=i)
            for i, c in enumerate(CONVS[:2])]
    extra = {"draft": DraftModel(other, max_draft=2)} if helper == "draft" else {"eft": EmulatedFineTune(other, 0.5)}
    Engine(tuned, tokenizer, None, stop_token_ids(tokenizer), max_batch=2, precision="bf16", **extra).run(rows)
    assert seen and set(seen) == {torch.bfloat16}
    assert layer.weight.dtype == torch.float32 and all(len(r.generated) > 0 for r in rows)


@torch.no_grad()
def test_speculative_sampling_keeps_the_model_distribution(tiny_model_dir, tokenizer):
    """1000 rows sample 3 tokens from one prompt (temperature 0.7, top-k 2) while a drafter proposes the
    most likely second token: the frequencies of (first, second) token pairs match the model's exact
    distribution, computed from its logits, within total-variation distance 0.06, as plain sampling's do
    (1000 draws over <= 4 pairs: the expected distance is ~0.02, its spread ~0.01; drafts always kept
    would be off by the rejection mass, here > 0.1, asserted below)."""
    from tunesmith.generation.sampling import row_probs

    model = model_with(tiny_model_dir, "none")
    ids = prompt_ids(tokenizer, CONVS[0])
    settings = GenRequest(prompt_ids=ids, sink=None, temperature=0.7, top_k=2)
    p1 = row_probs(model(input_ids=torch.tensor([ids])).logits[0, -1], settings)
    exact = {}
    for x1 in p1.nonzero().flatten().tolist():
        p2 = row_probs(model(input_ids=torch.tensor([ids + [x1]])).logits[0, -1], settings)
        exact.update({(x1, x2): float(p1[x1] * p2[x2]) for x2 in p2.nonzero().flatten().tolist()})
    likely = max(exact, key=exact.get)[1]

    class Fixed(PromptLookup):
        def draft(self, row):
            return [likely] if self.budget(row) else []

    def pairs(lookup):
        rows = [GenRequest(prompt_ids=ids, sink=None, max_tokens=3, temperature=0.7, top_k=2, seed=i, text=False,
                           timeout_s=float("inf")) for i in range(1000)]
        engine = Engine(model, tokenizer, None, [], max_batch=500, lookup=lookup)
        engine.run(rows)
        counts = {}
        for r in rows:
            counts[tuple(r.generated[:2])] = counts.get(tuple(r.generated[:2]), 0) + 1
        tv = 0.5 * sum(abs(counts.get(k, 0) / len(rows) - exact.get(k, 0.0)) for k in set(counts) | set(exact))
        return tv, engine.stats

    plain_tv, _ = pairs(None)
    spec_tv, stats = pairs(Fixed(max_draft=1, min_gain=0.0, max_batch=500))
    assert 0 < stats["accepted_draft_tokens"] < stats["drafted_tokens"] == 1000    # kept and rejected drafts both
    assert 1 - stats["accepted_draft_tokens"] / 1000 > 0.1
    assert plain_tv < 0.06 and spec_tv < 0.06, (plain_tv, spec_tv)


FEW_SHOT = [{"role": "user", "content": "Order: two red pens for Oslo."},
            {"role": "assistant", "content": '{"item": "pen", "count": 2, "colour": "red", "city": "Oslo"}'},
            {"role": "user", "content": "Please send one blue folder to Lima, no rush at all."},
            {"role": "assistant", "content": '{"item": "folder", "count": 1, "colour": "blue", "city": "Lima"}'}]


@pytest.mark.parametrize("name", list(METHODS))
def test_a_shared_prompt_prefix_is_prefilled_once_and_changes_no_greedy_token(name, tiny_model_dir, tokenizer,
                                                                             monkeypatch):
    import tunesmith.generation.engine as engine_module
    from tunesmith.generation.prefix import common_prefix

    convs = [FEW_SHOT + c for c in CONVS]               # remainders of different lengths after the shared demos
    model = model_with(tiny_model_dir, name)
    expected = todays_path(model, tokenizer, convs)
    assert sum(map(len, expected)) > 2 * NEW
    prompts = [prompt_ids(tokenizer, c) for c in convs]
    shared = common_prefix(prompts)
    assert len(shared) > 60
    runs = []
    real_init = engine_module.Engine.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        runs.append(self)

    monkeypatch.setattr(engine_module.Engine, "__init__", spy)
    assert generate_tokens(model, tokenizer, convs, max_new_tokens=NEW, batch_size=2) == expected
    assert generate_tokens(model, tokenizer, convs, max_new_tokens=NEW, batch_size=len(convs)) == expected
    # Prefill groups cut short by the token cap still share the one prefix pass.
    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", 2 * max(map(len, prompts)))
    assert generate_tokens(model, tokenizer, convs, max_new_tokens=NEW, batch_size=len(convs)) == expected
    whole = sum(map(len, prompts))
    for engine in runs:
        if name in ("prompt", "prefix"):     # virtual tokens come first: those prompts are prefilled whole
            assert engine.prefix is None and engine.stats["prefill_tokens"] == whole
        else:
            assert engine.prefix.layers is not None
            assert engine.stats["prefill_tokens"] == whole - len(shared) * len(convs)


@torch.no_grad()
def test_a_raw_prompt_skips_the_chat_template_and_stop_strings_end_the_reply(tiny_model_dir, tokenizer):
    """A plain string is a completion prompt (Self-Instruct's list for a writer model): its greedy tokens are
    HF `generate`'s on the raw ids; a stop string ends the reply where its text first holds it."""
    model = model_with(tiny_model_dir, "none")
    prompts = ["Request 1: send two lamps to Oslo\nRequest 2: three red mugs for Lima\nRequest 3:",
               "Items: apple, pear, plum,"]
    expected = []
    for text in prompts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             **generate_kwargs(NEW, pad_id(tokenizer), stop_token_ids(tokenizer), 0.0))
        expected.append(cut_at_stop(out[0, ids.shape[1]:].tolist(), stop_token_ids(tokenizer)))
    assert generate_tokens(model, tokenizer, prompts, max_new_tokens=NEW, batch_size=2) == expected
    # A stop string taken from the middle of the first reply: that reply ends there, the other runs on.
    full = tokenizer.decode(expected[0], skip_special_tokens=True)
    assert len(expected[0]) == NEW and len(full) > 20
    stop = full[10:14]
    got = generate_tokens(model, tokenizer, prompts, max_new_tokens=NEW, batch_size=2, stop=(stop,))
    text = tokenizer.decode(got[0], skip_special_tokens=True)
    assert stop in text and len(got[0]) < NEW
    assert text[:text.find(stop)] == full[:full.find(stop)]
    assert got[0] == expected[0][:len(got[0])]
    if stop not in tokenizer.decode(expected[1], skip_special_tokens=True):
        assert got[1] == expected[1]
