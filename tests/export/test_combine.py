"""Combine: peft weighted combinations, written as a normal adapter folder; mismatches are clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from tests.export.helpers import ids_for, make_adapter, torch_logits
from tunesmith.errors import UserError
from tunesmith.export.combine import combine_adapters


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return (make_adapter(tiny_model_dir, root / "a1", seed=1),
            make_adapter(tiny_model_dir, root / "a2", seed=2))


def loaded(base_dir, adapter_dir):
    from peft import PeftModel

    from tunesmith.models import load_model

    return PeftModel.from_pretrained(load_model(str(base_dir)), str(adapter_dir))


def delta(base_dir, adapter_dir) -> torch.Tensor:
    """The update B·A·scale the adapter makes to layer 0's q_proj."""
    from tunesmith.models import load_model

    base = load_model(str(base_dir)).model.layers[0].self_attn.q_proj.weight
    merged = loaded(base_dir, adapter_dir).merge_and_unload().model.layers[0].self_attn.q_proj.weight
    return merged - base


def test_weights_one_zero_equal_first_adapter(tiny_model_dir, adapters, tokenizer, tmp_path):
    out = combine_adapters(list(adapters), [1.0, 0.0], tmp_path / "c", method="linear")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "tunesmith.json").read_text())["base"] == str(tiny_model_dir)
    ids = ids_for(tokenizer)
    combined = torch_logits(loaded(tiny_model_dir, out), ids)
    first = torch_logits(loaded(tiny_model_dir, adapters[0]), ids)
    second = torch_logits(loaded(tiny_model_dir, adapters[1]), ids)
    assert torch.allclose(combined, first, atol=1e-4, rtol=0), (combined - first).abs().max()
    assert (first - second).abs().max() > 0.1   # the two adapters really differ


def test_cat_is_the_exact_weighted_sum(tiny_model_dir, adapters, tmp_path):
    out = combine_adapters(list(adapters), [0.6, 0.4], tmp_path / "cat", method="cat")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8                       # ranks add up
    expected = 0.6 * delta(tiny_model_dir, adapters[0]) + 0.4 * delta(tiny_model_dir, adapters[1])
    assert torch.allclose(delta(tiny_model_dir, out), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method,density", [("ties", 0.5), ("dare_linear", 0.5), ("svd", None)])
def test_other_methods_give_a_loadable_adapter(tiny_model_dir, adapters, tmp_path, method, density):
    out = combine_adapters(list(adapters), [0.5, 0.5], tmp_path / method, method=method, density=density)
    d = delta(tiny_model_dir, out)
    assert torch.isfinite(d).all() and d.abs().max() > 0


def test_combine_errors(tiny_model_dir, adapters, tokenizer, tmp_path):
    a1, a2 = adapters
    with pytest.raises(UserError, match=r"1 weight\(s\) for 2 adapters"):
        combine_adapters([a1, a2], [1.0], tmp_path / "o")
    with pytest.raises(UserError, match="unknown combination 'average'"):
        combine_adapters([a1, a2], [0.5, 0.5], tmp_path / "o", method="average")
    with pytest.raises(UserError, match="needs a density"):
        combine_adapters([a1, a2], [0.5, 0.5], tmp_path / "o", method="dare_ties")
    narrow = make_adapter(tiny_model_dir, tmp_path / "narrow", targets=["q_proj", "v_proj"])
    with pytest.raises(UserError, match="only adapters trained on the same target_modules"):
        combine_adapters([a1, narrow], [0.5, 0.5], tmp_path / "o")
    from tests.conftest import make_tiny_llama

    other_base = make_tiny_llama(tokenizer, tmp_path / "other", seed=5)
    foreign = make_adapter(other_base, tmp_path / "foreign")
    with pytest.raises(UserError, match="same base model"):
        combine_adapters([a1, foreign], [0.5, 0.5], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_combine(adapters, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tunesmith", "combine", str(adapters[0]), str(adapters[1]),
                           "--weights", "0.7,0.3", "--method", "cat", "-o", str(tmp_path / "c")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "c" / "tunesmith.json").read_text())["combined"]["weights"] == [0.7, 0.3]
    bad = subprocess.run([sys.executable, "-m", "tunesmith", "combine", str(adapters[0]), str(adapters[1]),
                          "--weights", "0.7,x", "-o", str(tmp_path / "d")], capture_output=True, text=True)
    assert bad.returncode != 0 and "not a comma-separated list" in bad.stderr and "Traceback" not in bad.stderr


def test_combine_never_writes_over_its_inputs(adapters, tmp_path):
    from tests.test_io_utils import snapshot

    a1, a2 = adapters
    before = snapshot(a1.parent)
    for out in (a1.parent, a1, a2):
        with pytest.raises(UserError, match="the output folder contains the input"):
            combine_adapters([a1, a2], [0.5, 0.5], out, method="cat")
    # An existing adapter folder that is not an input is a previous output and may be replaced;
    # a folder holding anything else is not.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    with pytest.raises(UserError, match="refusing to replace this folder"):
        combine_adapters([a1, a2], [0.5, 0.5], tmp_path / "notes", method="cat")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep"
    assert snapshot(a1.parent) == before
