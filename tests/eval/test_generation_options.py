"""eval.prompt_lookup, eval.draft_model and eval.eft_large through a real evaluation on tiny models."""

from __future__ import annotations

import pytest
import torch

from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.errors import UserError

SAMPLES = [Sample(messages=[{"role": "user", "content": f"Tell me about item {i}."},
                            {"role": "assistant", "content": f"Item {i}."}], id=f"q{i}") for i in range(4)]
BASE = dict(metrics=["exact_match"], baselines=["zero-shot"], max_new_tokens=8, regression=False, perplexity=False)


@pytest.fixture
def tuned(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(5)
    return get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                                      init_lora_weights=False)).eval()


def test_eft_and_speculation_options_reach_the_tuned_answers(tuned, tiny_model_dir, tokenizer, tmp_path):
    from tests.conftest import make_tiny_llama
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.generation import generate
    from tunesmith.models import load_model

    large_dir = make_tiny_llama(tokenizer, tmp_path / "large", layers=3, seed=5)
    convs = [s.messages[:1] for s in SAMPLES]
    plain = run_eval(build_systems(tuned, ["zero-shot"]), tokenizer, SAMPLES, EvalConfig(**BASE), tmp_path / "plain")
    fast = run_eval(build_systems(tuned, ["zero-shot"]), tokenizer, SAMPLES,
                    EvalConfig(**BASE, prompt_lookup=4, draft_model=str(tiny_model_dir)), tmp_path / "fast")
    assert fast.predictions == plain.predictions          # speculation changes no greedy answer
    eft = run_eval(build_systems(tuned, ["zero-shot"]), tokenizer, SAMPLES,
                   EvalConfig(**BASE, eft_large=str(large_dir), eft_beta=0.5), tmp_path / "eft")
    expected = generate(tuned, tokenizer, convs, max_new_tokens=8, eft_large=load_model(str(large_dir)), eft_beta=0.5)
    assert eft.predictions["tuned"] == expected != plain.predictions["tuned"]
    assert {k: v for k, v in eft.predictions.items() if k != "tuned"} == \
        {k: v for k, v in plain.predictions.items() if k != "tuned"}      # the baselines are not up-scaled
    assert eft.report["eft"] == {"large": str(large_dir), "beta": 0.5, "system": "tuned"}


def test_a_draft_model_with_another_vocabulary_is_refused_naming_both(tuned, tiny_model_dir, tokenizer, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from tunesmith.eval.runner import build_systems, run_eval

    other = shutil.copytree(tiny_model_dir, tmp_path / "other-vocab")
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<only-here>"])
    tok.save_pretrained(str(other))
    with pytest.raises(UserError, match=f"draft model '{other}' has another vocabulary than 'the evaluated model'"):
        run_eval(build_systems(tuned, ["zero-shot"]), tokenizer, SAMPLES, EvalConfig(**BASE, draft_model=str(other)),
                 tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()
