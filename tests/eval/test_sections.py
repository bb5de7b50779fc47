"""The section registry of run_eval: a section registered from outside runs, adds its column to every
system and its entry to report.json and report.md, fails early from validate; progress arrives as events."""

from __future__ import annotations

import json

import pytest

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.errors import ConfigError
from tunesmith.eval import sections
from tunesmith.eval.runner import build_systems, run_eval, validate
from tunesmith.eval.sections import EvalSection, SectionResult
from tunesmith.eval.table import Column
from tunesmith.events import EvalFinished, EvalProgress, Events


class PromptLength(EvalSection):
    """A toy check: the number of characters of each chat prompt, identical for every system."""
    name = "toy-prompt-length"
    order = 1000
    refuse = False

    def validate(self, cfg):
        if PromptLength.refuse:
            raise ConfigError("toy section refuses this config")

    def run(self, ctx):
        lengths = [float(len(s.prompt_messages()[-1]["content"])) for s in ctx.chat]
        result = SectionResult(columns=[Column("prompt_chars", lambda rows: sum(rows) / len(rows), True)])
        for spec in ctx.systems:
            advance = ctx.progress(spec.name, "toy", len(lengths))
            result.rows[spec.name] = {"prompt_chars": lengths}
            advance(len(lengths))
        result.report["toy"] = {"examples": len(lengths), "systems": [s.name for s in ctx.systems]}
        return result

    def markdown(self, report):
        return ["", "## Toy", "", f"{report['toy']['examples']} prompts measured."] if "toy" in report else []


@pytest.fixture
def toy_section():
    sections.register(PromptLength)
    try:
        yield PromptLength
    finally:
        sections.unregister(PromptLength.name)
        PromptLength.refuse = False


@pytest.fixture(scope="module")
def tuned(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(0)
    return get_peft_model(load_model(str(tiny_model_dir)),
                          LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).eval()


CHATS = [Sample(messages=[{"role": "user", "content": "x" * n}, {"role": "assistant", "content": "y"}])
         for n in (3, 5, 10)]
CFG = dict(metrics=["exact_match"], baselines=["zero-shot"], max_new_tokens=2, regression=False, perplexity=False)


def test_built_in_sections_are_registered_in_report_order():
    names = [cls.name for cls in sections.registered()]
    assert names[:7] == ["generation", "prompt_tokens", "perplexity", "pass@k", "judge", "forgetting", "lm-eval"]


def test_a_registered_section_runs_and_lands_in_the_report(toy_section, tuned, tokenizer, tmp_path):
    seen = []
    result = run_eval(build_systems(tuned, ["zero-shot"]), tokenizer, CHATS, EvalConfig(**CFG), tmp_path,
                      events=Events(seen.append))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == result.report
    # Its column comes after the built-in ones: exact_match stays the primary metric.
    assert report["metrics"] == ["exact_match", "prompt_chars"] and report["primary_metric"] == "exact_match"
    for system in ("base_zero_shot", "tuned"):
        assert report["systems"][system]["prompt_chars"] == pytest.approx(6.0)
        assert report["systems"][system]["prompt_chars_ci95"][0] <= 6.0 <= report["systems"][system]["prompt_chars_ci95"][1]
    assert report["toy"] == {"examples": 3, "systems": ["base_zero_shot", "tuned"]}
    md = (tmp_path / "report.md").read_text()
    assert "| prompt_chars |" in md and md.rstrip().endswith("3 prompts measured.")

    # Progress: 0 then all of each stage per system, and one EvalFinished naming the report.
    progress = [(e.system, e.stage, e.done, e.total) for e in seen if isinstance(e, EvalProgress)]
    for system in ("base_zero_shot", "tuned"):
        assert (system, "generation", 0, 3) in progress and (system, "generation", 3, 3) in progress
        assert [p for p in progress if p[:2] == (system, "toy")] == [(system, "toy", 0, 3), (system, "toy", 3, 3)]
    finished = [e for e in seen if isinstance(e, EvalFinished)]
    assert len(finished) == 1 and seen[-1] is finished[0]
    assert finished[0].verdict == report["verdict"] and finished[0].report_path == str(tmp_path / "report.md")


def test_unregistered_section_is_gone(toy_section, tuned, tokenizer, tmp_path):
    sections.unregister(PromptLength.name)
    report = run_eval(build_systems(tuned, []), tokenizer, CHATS, EvalConfig(**CFG), tmp_path).report
    assert "toy" not in report and report["metrics"] == ["exact_match"]


def test_a_section_validate_fails_before_any_model_work(toy_section, tuned, tokenizer, tmp_path):
    PromptLength.refuse = True
    with pytest.raises(ConfigError, match="toy section refuses"):
        validate(EvalConfig(**CFG))
    with pytest.raises(ConfigError, match="toy section refuses"):
        run_eval(build_systems(tuned, []), tokenizer, CHATS, EvalConfig(**CFG), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_name_taken_by_another_section_is_refused(toy_section):
    class Impostor(EvalSection):
        name = "generation"

    with pytest.raises(ValueError, match="already registered"):
        sections.register(Impostor)
