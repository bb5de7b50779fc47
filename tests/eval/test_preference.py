"""Preference accuracy by implicit reward on the tiny model with a toy LoRA adapter: the sequence
log-prob helper against a full-vocabulary log_softmax gather, rewards of exactly 0 when the policy is
the reference, and the section end to end (run_eval and `tunesmith eval`) with numbers in report.json."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.cli import main
from tunesmith.config import EvalConfig
from tunesmith.data.load import load_samples
from tunesmith.data.schema import Sample
from tunesmith.eval import stats
from tunesmith.eval.preference import pair_items, pair_scores, sequence_logps, summarize
from tunesmith.eval.runner import build_systems, run_eval
from tunesmith.models.adapters import adapters_off

PAIRS = [
    Sample(messages=[{"role": "user", "content": "Why is the sky blue?"}], chosen="Rayleigh scattering.",
           rejected="Because the sea is blue and the sky reflects it all day long.", id="p0"),
    Sample(messages=[{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "2+2?"}],
           chosen="Four.", rejected="It is four, of course.", id="p1"),
    Sample(messages=[{"role": "user", "content": "Name a colour."}], chosen="Blue.", rejected="Banana.", id="p2"),
    Sample(messages=[{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."},
                     {"role": "user", "content": "Again, louder."}], chosen="HI!", rejected="hi", id="p3"),
    Sample(messages=[{"role": "user", "content": "Capital of France?"}], chosen="Paris.", rejected="Lyon.", id="p4"),
]


def _lora(tiny_model_dir, *, zero: bool = False, seed: int = 3):
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    return get_peft_model(load_model(str(tiny_model_dir)),
                          LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                     init_lora_weights=zero)).eval()


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return _lora(tiny_model_dir)


def full_logp(model, ids: list[int], scored: list[bool]) -> float:
    """The plain definition: one sequence alone, log_softmax over the whole vocabulary, gather."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    return float(logp[torch.tensor(scored[1:])].sum())


def test_only_the_final_answer_is_scored(tokenizer):
    from tunesmith.data.tokenize import tokenize_sample
    from tunesmith.eval.preference import answer_item

    # The answer's tokens are the ones SFT would train on for a single-turn chat ...
    ids, scored = answer_item(tokenizer, PAIRS[0].messages, PAIRS[0].chosen)
    sft_ids, labels = tokenize_sample(tokenizer, Sample(messages=[*PAIRS[0].messages,
                                                                  {"role": "assistant", "content": PAIRS[0].chosen}]))
    # (the template's separator after the end-of-turn token is cut: it is never scored and comes after
    # every scored token, so no log-prob changes)
    n = len(ids)
    assert ids == sft_ids[:n] and scored == [lab != -100 for lab in labels[:n]]
    assert scored[-1] and all(lab == -100 for lab in labels[n:]) and len(sft_ids) - n <= 1
    # ... and after a multi-turn prompt the earlier assistant turn ("Hi.") is context, not scored.
    multi, multi_scored = answer_item(tokenizer, PAIRS[3].messages, "HI!")
    single, single_scored = answer_item(tokenizer, [{"role": "user", "content": "x"}], "HI!")
    answer = [t for t, s in zip(single, single_scored) if s]
    assert [t for t, s in zip(multi, multi_scored) if s] == answer
    assert sum(multi_scored) == len(answer) == 3   # "HI", "!" and the end-of-turn token


# A summed fp32 log-prob is exact to a few units in the last place of its magnitude (1.5e-5 at -182), and
# which few depends on the order the CPU's kernels sum in: AVX-512 and AVX2 kernels differ (an absolute
# 1e-5 held on the first and failed on the second). So comparisons scale with the magnitudes compared.
FP32_SUM = 4e-7          # ~3 ulps of fp32, relative


def fp32_close(*magnitudes: float) -> float:
    """The tolerance of a difference of summed fp32 log-probs of these magnitudes."""
    return 1e-5 + FP32_SUM * sum(abs(m) for m in magnitudes)


def test_sequence_logps_equal_a_full_log_softmax_gather(policy, tokenizer):
    items = pair_items(tokenizer, PAIRS)
    assert len(items) == 2 * len(PAIRS) and len({len(ids) for ids, _ in items}) > 3  # padding is exercised
    for ids, scored in items:  # only answer tokens are scored, and each answer has some
        assert 0 < sum(scored) < len(ids) and not scored[0]
    for context in (lambda: torch.no_grad(), lambda: adapters_off(policy)):
        with context():
            got = sequence_logps(policy, items, batch_size=3)
            want = [full_logp(policy, ids, scored) for ids, scored in items]
        assert got == pytest.approx(want, rel=FP32_SUM, abs=1e-5)
        assert all(v < 0 for v in got)


def test_rewards_are_exactly_zero_when_the_policy_is_the_reference(tiny_model_dir, tokenizer):
    model = _lora(tiny_model_dir, zero=True)   # peft's default init: B = 0, the adapter adds nothing
    items = pair_items(tokenizer, PAIRS)
    policy = sequence_logps(model, items, batch_size=4)
    with adapters_off(model):
        reference = sequence_logps(model, items, batch_size=4)
    scores = pair_scores(policy, reference)
    assert [s.margin for s in scores] == [0.0] * len(PAIRS)
    summary = summarize(scores)
    assert summary["accuracy"] == 0.0 and summary["ties"] == len(PAIRS) and summary["margin_mean"] == 0.0


CFG = dict(metrics=["exact_match"], baselines=["zero-shot"], max_new_tokens=2, regression=False, perplexity=False)


def _expected(policy, tokenizer) -> list[tuple[float, float]]:
    """(reward chosen, reward rejected) per pair, from full_logp with the adapter on and off."""
    out = []
    for s in PAIRS:
        rewards = []
        for answer in (s.chosen, s.rejected):
            (ids, scored), = pair_items(tokenizer, [Sample(messages=s.messages, chosen=answer, rejected="-")])[:1]
            on = full_logp(policy, ids, scored)
            with adapters_off(policy):
                off = full_logp(policy, ids, scored)
            rewards.append(on - off)
        out.append(tuple(rewards))
    return out


def test_preference_section_end_to_end(policy, tokenizer, tiny_model_dir, tmp_path):
    chat = Sample(messages=[{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}], id="c0")
    cfg = EvalConfig(**CFG, judge=f"local:{tiny_model_dir}")
    result = run_eval(build_systems(policy, ["zero-shot"]), tokenizer, [chat, *PAIRS], cfg, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == result.report
    pref = report["preference"]
    expected = _expected(policy, tokenizer)
    correct = [1.0 if c > r else 0.0 for c, r in expected]
    margins = [c - r for c, r in expected]
    assert pref["system"] == "tuned" and pref["reference"] == "adapter_off" and pref["n"] == len(PAIRS)
    assert pref["precision"] == "fp32"
    assert pref["accuracy"] == pytest.approx(sum(correct) / len(PAIRS))
    assert pref["accuracy_ci95"] == pytest.approx(list(stats.wilson_interval(sum(correct), len(PAIRS))))
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    pair_rows = [r for r in rows if r.get("section") == "preference"]
    largest = max(abs(v) for r in pair_rows for v in r["logp"].values())
    assert pref["margin_mean"] == pytest.approx(sum(margins) / len(margins), abs=fp32_close(*[largest] * 4))
    assert pref["margin_ci95"][0] <= pref["margin_mean"] <= pref["margin_ci95"][1]
    assert pref["reward_chosen_mean"] == pytest.approx(sum(c for c, _ in expected) / len(PAIRS),
                                                       abs=fp32_close(largest, largest))
    # The pairs' prompts are answered like the chat example's (the chosen answer is the reference) ...
    assert report["n_examples"] == 1 + len(PAIRS)
    generated = [r for r in rows if r["system"] == "tuned" and "prediction" in r]
    assert [r["id"] for r in generated] == ["c0"] + [s.id for s in PAIRS]
    assert [r["reference"] for r in generated[1:]] == [s.chosen for s in PAIRS]
    # ... so the judge runs on them, against the zero-shot baseline: the adapter-off reference model.
    assert report["judge"]["baseline"] == "base_zero_shot" and report["judge"]["n"] == 1 + len(PAIRS)
    # One predictions row per pair with its log-probs and rewards.
    assert [r["id"] for r in pair_rows] == [s.id for s in PAIRS]
    for r, (c, rej) in zip(pair_rows, expected):
        lp = r["logp"]
        assert r["reward_chosen"] == pytest.approx(c, abs=fp32_close(lp["policy_chosen"], lp["reference_chosen"]))
        assert r["reward_rejected"] == pytest.approx(rej, abs=fp32_close(lp["policy_rejected"], lp["reference_rejected"]))
        assert r["correct"] == (r["reward_chosen"] > r["reward_rejected"])
        assert r["logp"]["policy_chosen"] - r["logp"]["reference_chosen"] == pytest.approx(r["reward_chosen"])
    md = (tmp_path / "report.md").read_text()
    assert "## Preference accuracy" in md and f"**{pref['accuracy']:.3f}**" in md


def test_chat_only_data_has_no_preference_entry(policy, tokenizer, tmp_path):
    chat = Sample(messages=[{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}])
    report = run_eval(build_systems(policy, ["zero-shot"]), tokenizer, [chat], EvalConfig(**CFG), tmp_path).report
    assert "preference" not in report and "Preference" not in (tmp_path / "report.md").read_text()


def test_no_reference_is_reported_as_skipped(tiny_model_dir, tokenizer, tmp_path):
    from tunesmith.models import load_model

    plain = load_model(str(tiny_model_dir)).eval()   # no adapter to switch off, and no base system
    report = run_eval(build_systems(plain, []), tokenizer, PAIRS, EvalConfig(**CFG), tmp_path).report
    assert report["preference"] == {"n": len(PAIRS), "skipped": "no reference: the tuned model has no adapter to "
                                    "switch off and no base system was scored"}
    assert "Skipped for 5 pairs: no reference" in (tmp_path / "report.md").read_text()


def test_cli_eval_on_a_preference_file(policy, tokenizer, tiny_model_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    policy.save_pretrained(adapter)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": s.messages, "chosen": s.chosen, "rejected": s.rejected, "id": s.id})
                            + "\n" for s in PAIRS), encoding="utf-8")
    assert [s.kind for s in load_samples(data)] == ["preference"] * len(PAIRS)
    out = tmp_path / "report"
    try:
        main(["eval", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--data", str(data), "-o", str(out),
              "--baselines", "zero-shot", "--max-new-tokens", "2", "--no-regression", "--quiet"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    printed = capsys.readouterr().out
    assert code == 0
    pref = json.loads((out / "report.json").read_text())["preference"]
    # The saved adapter, loaded by the CLI, gives the in-memory adapter's numbers at the CLI's precision
    # (bf16 autocast on a CPU that has it).
    from tunesmith.train.trainer import resolve_precision

    precision = resolve_precision("auto")
    items = pair_items(tokenizer, PAIRS)
    on = sequence_logps(policy, items, precision=precision)
    with adapters_off(policy):
        off = sequence_logps(policy, items, precision=precision)
    expected = summarize(pair_scores(on, off))
    assert pref["n"] == len(PAIRS) and pref["reference"] == "adapter_off" and pref["precision"] == precision
    assert pref["accuracy"] == expected["accuracy"]
    assert pref["margin_mean"] == pytest.approx(expected["margin_mean"], abs=1e-4)
    assert f"preference accuracy of tuned (implicit reward against the reference model): {pref['accuracy']:.3f}" \
           in " ".join(printed.split())


def test_desirable_kto_records_are_answered_undesirable_ones_are_not(policy, tokenizer, tmp_path):
    good = Sample(messages=[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
                  label=True, id="good")
    bad = Sample(messages=[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
                 label=False, id="bad")
    report = run_eval(build_systems(policy, ["zero-shot"]), tokenizer, [good, bad], EvalConfig(**CFG), tmp_path).report
    assert report["n_examples"] == 1 and "preference" not in report
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert {(r["id"], r["reference"]) for r in rows} == {("good", "Hello.")}
