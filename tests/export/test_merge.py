"""Merge: the merged HF folder reproduces the PEFT model; QLoRA merges into fp32 weights; clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from tests.export.helpers import ids_for, make_adapter, torch_logits
from tunesmith.errors import UserError
from tunesmith.export.merge import is_quantized, merge_adapter, save_merged


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("run") / "adapter")


def peft_logits(base_dir, adapter_dir, ids):
    from peft import PeftModel

    from tunesmith.models import load_model

    return torch_logits(PeftModel.from_pretrained(load_model(str(base_dir)), str(adapter_dir)), ids)


def test_merged_logits_equal_peft_logits(tiny_model_dir, adapter_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_adapter(adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out)          # plain transformers, no peft
    ids = ids_for(tokenizer)
    expected = peft_logits(tiny_model_dir, adapter_dir, ids)
    got = torch_logits(merged, ids)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    # The adapter must matter, or the comparison above proves nothing.
    from tunesmith.models import load_model
    assert (torch_logits(load_model(str(tiny_model_dir)), ids) - expected).abs().max() > 0.1
    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded.chat_template == tokenizer.chat_template
    assert not any(p.name.startswith(".merged.tmp") for p in tmp_path.iterdir())


def test_merge_dtype_bf16(adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_adapter(adapter_dir, tmp_path / "m16", dtype="bf16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_qlora_adapter_merges_into_fp32_base(tiny_model_dir, tokenizer, tmp_path):
    """A peft model on a 4-bit base merges into the fp32 reload of that base, never into the NF4 weights."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    base4 = load_model(str(tiny_model_dir), quantization={"bits": 4, "quant_type": "nf4", "double": True,
                                                          "compute_dtype": "fp32"})
    torch.manual_seed(3)
    qlora = get_peft_model(base4, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in qlora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    assert is_quantized(qlora)
    out = save_merged(qlora, tokenizer, tmp_path / "merged")

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not is_quantized(merged)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    q = merged.model.layers[0].self_attn.q_proj.weight
    assert q.dtype == torch.float32
    # Expected: the same adapter weights on the fp32 base, merged by peft in full precision.
    qlora.save_pretrained(tmp_path / "adapter")
    ids = ids_for(tokenizer)
    expected = peft_logits(tiny_model_dir, tmp_path / "adapter", ids)
    assert torch.allclose(torch_logits(merged, ids), expected, atol=1e-4, rtol=0)
    # The fp32 base's own weights survive: 4-bit rounding would move them by ~1e-2.
    fp32 = load_model(str(tiny_model_dir))
    k_merged = merged.model.layers[0].self_attn.k_proj.weight   # not adapted
    assert torch.equal(k_merged, fp32.model.layers[0].self_attn.k_proj.weight)


def test_non_mergeable_method_is_refused(adapter_dir, tmp_path):
    import shutil

    prefix = tmp_path / "prefix-adapter"
    shutil.copytree(adapter_dir, prefix)
    (prefix / "tunesmith.json").write_text(json.dumps({"base": "default", "method": "prefix"}))
    with pytest.raises(UserError, match="cannot be folded into the base weights"):
        merge_adapter(prefix, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_errors(adapter_dir, tmp_path):
    with pytest.raises(UserError, match="not an adapter folder"):
        merge_adapter(tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="unknown dtype 'int8'"):
        merge_adapter(adapter_dir, tmp_path / "out", dtype="int8")


def test_adapter_on_wrong_base_is_a_clear_error(adapter_dir, tokenizer, tmp_path):
    from tests.conftest import make_tiny_llama

    other = make_tiny_llama(tokenizer, tmp_path / "wide", hidden=96)
    with pytest.raises(UserError, match="does not fit base model"):
        merge_adapter(adapter_dir, tmp_path / "out", base=str(other))


def test_cli_merge_bad_dtype_exits_nonzero(adapter_dir, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tunesmith", "merge", "--adapter", str(adapter_dir), "-o",
                           str(tmp_path / "o"), "--dtype", "int3"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "unknown dtype 'int3'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_merge_into_the_run_folder_is_refused_and_keeps_every_file(adapter_dir, tmp_path):
    """`merge --adapter runs/x/adapter -o runs/x` used to replace the whole run, adapter included."""
    import shutil
    import subprocess
    import sys

    from tests.test_io_utils import snapshot

    run = tmp_path / "run"
    shutil.copytree(adapter_dir, run / "adapter")
    (run / "config.yaml").write_text("method: lora\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "tunesmith", "merge", "--adapter", str(run / "adapter"), "-o",
                           str(run)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "the output folder contains the input" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before
    # Writing over the adapter itself, or over a folder that holds other things, is refused too.
    with pytest.raises(UserError, match="contains the input"):
        merge_adapter(run / "adapter", run / "adapter")
    with pytest.raises(UserError, match="refusing to replace this folder"):
        merge_adapter(run / "adapter", tmp_path / "notes")
    assert snapshot(tmp_path) == before


def test_merge_replaces_a_previous_merged_folder(adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_adapter(adapter_dir, tmp_path / "merged", dtype="bf16")
    (out / "stale.txt").write_text("left from the first merge")
    merge_adapter(adapter_dir, out)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert next(AutoModelForCausalLM.from_pretrained(out).parameters()).dtype == torch.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]   # no temporary or old folder left
