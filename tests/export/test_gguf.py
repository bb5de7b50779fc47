"""GGUF export checked inside llama.cpp (llama-cpp-python): logits, tokenizer, LoRA adapters, quant types, errors.

Tolerances: an f32 GGUF run with an f32 KV cache reproduces torch logits to 1e-3 absolute (measured
~1e-5; llama.cpp sums in a different order). f16 weights move logits by up to ~5e-2 on this model.
"""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp  # noqa: F401  (`make test` installs it: a failed build must fail here, not skip every check)
import numpy as np
import pytest
import torch

from tests.export.helpers import ids_for, make_adapter, torch_logits
from tunesmith.errors import UserError
from tunesmith.export.gguf import export_gguf
from tunesmith.export.llama_runtime import open_llama
from tunesmith.export.verify import GGML_TYPE_F32

TEXTS = ["Hello world, it's 2024!", "  indented\tcode = [1, 22, 333]\n", "<|im_start|>user\nHi<|im_end|>\n",
         "naïve café — 10% off", "The lighthouse keeper's log: wind NE 6."]


def gguf_logits(path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    llm = open_llama(path, n_ctx=128, logits_all=True, n_threads=1, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                     **({"lora_path": str(lora)} if lora else {}))
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    export_gguf(str(tiny_model_dir), out, "f32,f16,q8_0", name="tiny", threads=1, log=lambda *_: None)
    return out


def test_f32_gguf_logits_match_torch(tiny_model_dir, tiny_export, tokenizer):
    from tunesmith.models import load_model

    ids = ids_for(tokenizer)
    expected = torch_logits(load_model(str(tiny_model_dir)), ids).numpy()
    got = gguf_logits(tiny_export / "tiny-f32.gguf", ids)
    assert np.abs(got - expected).max() < 1e-3
    f16 = gguf_logits(tiny_export / "tiny-f16.gguf", ids)
    assert np.abs(f16 - expected).max() < 5e-2
    assert (f16.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_tokenizer_and_metadata(tiny_export, tokenizer):
    from gguf import GGUFReader

    llm = open_llama(tiny_export / "tiny-f16.gguf", vocab_only=True)
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
                tokenizer(text, add_special_tokens=False)["input_ids"], text
        assert llm.token_eos() == tokenizer.eos_token_id
        assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
        assert llm.metadata["general.architecture"] == "llama"
    finally:
        llm.close()
    reader = GGUFReader(str(tiny_export / "tiny-q8_0.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types            # tied head: llama.cpp reuses token_embd
    assert not [p for p in tiny_export.iterdir() if p.name.startswith(".")]   # no temp files left


def test_modelfile(tiny_export):
    text = (tiny_export / "Modelfile").read_text()
    assert text.splitlines()[2] == "FROM ./tiny-f32.gguf"
    assert "<|im_start|>{{ .Role }}" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text


def test_greedy_output_of_merged_export_matches_torch(tiny_model_dir, tmp_path, tokenizer):
    """--adapter merges before export; --verify reports perplexity and greedy agreement per file."""
    adapter = make_adapter(tiny_model_dir, tmp_path / "run" / "adapter")
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(TEXTS) * 4)
    result = export_gguf(None, tmp_path / "out", "f32,q8_0", adapter=adapter, verify=True, verify_prompts=4,
                         verify_tokens=8, verify_text=text, threads=1, log=lambda *_: None)
    assert set(result.files) == {"f32", "q8_0"} and result.files["f32"].name == "run-f32.gguf"
    rows = {r.type: r for r in result.verify_rows}
    assert rows["f32"].agreement == 1.0 and abs(rows["f32"].delta_vs_torch_pct) < 0.01
    assert abs(rows["q8_0"].delta_vs_torch_pct) < 2.0 and 8.0 < rows["q8_0"].bits_per_weight < 9.0
    assert result.tokenizer_agreement == 1.0
    saved = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert [r["type"] for r in saved["rows"]] == ["torch fp32", "f32", "q8_0"]
    assert "| f32 |" in (tmp_path / "out" / "verify.md").read_text()


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_gguf_changes_llama_cpp_output_like_peft(tiny_model_dir, tmp_path, tokenizer, rslora):
    from peft import PeftModel

    from tunesmith.models import load_model

    adapter = make_adapter(tiny_model_dir, tmp_path / "my-adapter", r=4, alpha=8, rslora=rslora)
    result = export_gguf(None, tmp_path / "out", "f32", adapter=adapter, lora_gguf=True, threads=1,
                         log=lambda *_: None)
    assert result.lora is not None and result.lora.name == "my-adapter-lora.gguf"
    assert "ADAPTER ./my-adapter-lora.gguf" in result.modelfile.read_text()
    ids = ids_for(tokenizer)
    base_torch = torch_logits(load_model(str(tiny_model_dir)), ids).numpy()
    peft_torch = torch_logits(PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(adapter)), ids).numpy()
    base_gguf = gguf_logits(result.files["f32"], ids)
    lora_gguf = gguf_logits(result.files["f32"], ids, lora=result.lora)
    assert np.abs(base_gguf - base_torch).max() < 1e-3          # the base file is the bare base
    assert np.abs(lora_gguf - peft_torch).max() < 1e-3          # the adapter does what it does in peft
    assert np.abs(peft_torch - base_torch).max() > 0.5          # ... and it changes the output


def test_qwen2_and_mistral_round_trip(tokenizer, tmp_path):
    """Other Llama-family layouts: Qwen2 (q/k/v biases, NEOX rope, no permutation) and Mistral."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  initializer_range=0.2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    ids = ids_for(tokenizer)
    for name, cls, cfg in [("qwen2", Qwen2ForCausalLM, Qwen2Config(tie_word_embeddings=True, **common)),
                           ("mistral", MistralForCausalLM, MistralConfig(tie_word_embeddings=False, **common))]:
        torch.manual_seed(0)
        model = cls(cfg)
        if name == "qwen2":
            with torch.no_grad():
                for layer in model.model.layers:     # random init leaves biases at 0; make them count
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        proj.bias.normal_(std=0.5)
        folder = tmp_path / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        result = export_gguf(str(folder), tmp_path / f"{name}-out", "f32", threads=1, log=lambda *_: None)
        got = gguf_logits(result.files["f32"], ids)
        expected = torch_logits(model, ids).numpy()
        assert np.abs(got - expected).max() < 1e-3, name


def test_errors(tiny_model_dir, tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(UserError, match="unknown type 'q4_km'.*did you mean 'q4_k_m'"):
        export_gguf(str(tiny_model_dir), tmp_path / "o", "f16,q4_km")
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    with pytest.raises(UserError, match="architecture 'gpt2' is not supported"):
        export_gguf(str(gpt2), tmp_path / "o", "f16")
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    from tests.conftest import make_tiny_llama

    other = make_tiny_llama(tokenizer, tmp_path / "other", seed=9)
    with pytest.raises(UserError, match="adapter was trained on .* but --model is"):
        export_gguf(str(other), tmp_path / "o", "f16", adapter=adapter)
    with pytest.raises(UserError, match="--lora-gguf needs --adapter"):
        export_gguf(str(tiny_model_dir), tmp_path / "o", "f16", lora_gguf=True)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_export_unknown_quant(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tunesmith", "export", "gguf", "--model", str(tiny_model_dir),
                           "-o", str(tmp_path / "o"), "--quant", "q3"], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown type 'q3'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", ["no prompts", "one-token text"])
def test_cli_verify_refuses_what_it_cannot_measure(tiny_model_dir, tokenizer, tmp_path, case):
    """--verify-prompts 0 used to crash on max() of nothing; a text under 2 tokens divided by zero."""
    import subprocess
    import sys

    text = tmp_path / "heldout.txt"
    text.write_text("Hello")
    assert len(tokenizer("Hello", add_special_tokens=False)["input_ids"]) == 1
    args, expected = {
        "no prompts": (["--verify-prompts", "0"], "--verify-prompts: 0 prompts; greedy agreement needs at least 1"),
        "one-token text": (["--verify-text", str(text)],
                           f"--verify-text {text}: the held-out text is 1 token(s); perplexity needs at least 2")}[case]
    proc = subprocess.run([sys.executable, "-m", "tunesmith", "export", "gguf", "--model", str(tiny_model_dir),
                           "-o", str(tmp_path / "o"), "--quant", "f16", "--verify", *args],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not list((tmp_path / "o").glob("*.gguf"))      # refused before any file is written


def test_verify_refuses_no_tokens_and_empty_text(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="--verify-tokens: 0 tokens; greedy continuations need at least 1"):
        export_gguf(str(tiny_model_dir), tmp_path / "o", "f16", verify=True, verify_tokens=0)
    assert not (tmp_path / "o").exists()
    # An empty file used to fall back to the built-in passage silently, mislabelling the table.
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match=r"empty.txt: the held-out text is 0 token\(s\)"):
        export_gguf(str(tiny_model_dir), tmp_path / "o", "f16", verify=True, verify_text=empty, log=lambda *_: None)
    assert not list((tmp_path / "o").glob("*.gguf"))


@pytest.mark.slow
def test_default_model_f16_q8_0_verify(tmp_path):
    """SmolLM2-135M: the targets of issue 7 (f16 Δppl < 0.1 %, q8_0 < 0.5 %), on a shortened run.

    Stock q8_0 misses the q8_0 target on this model, so q8_0 is also checked with the value and MLP-down
    projections kept in f16 (`--keep-f16 attn_v,ffn_down`, 172.8 MB instead of 144.8). Measured Δppl vs
    the f16 file / torch on the 854 held-out tokens (the CPU's llama.cpp kernels move them, see
    docs/export.md):

        CPU                       f16       stock q8_0   attn_v in f16   attn_v + ffn_down in f16
        AVX-512 (the docs' table) +0.001 %  +0.953 %     -0.039 %        -
        AVX2-only (AMD EPYC)      -0.012 %  +0.83 %      +0.55 %         +0.40 %
    """
    from tunesmith.export.quantize import QUANT_TYPES, quantize_file
    from tunesmith.export.verify import build_inputs, gguf_measure
    from tunesmith.models import load_tokenizer, resolve_base

    result = export_gguf("default", tmp_path, "f16,q8_0", verify=True, verify_prompts=6, verify_tokens=16,
                         keep_f16=["attn_v", "ffn_down"], threads=1, log=lambda *_: None)
    rows = {r.type.split(" ")[0]: r for r in result.verify_rows}
    assert abs(rows["f16"].delta_vs_torch_pct) < 0.1
    # The exported f16 file's greedy output equals torch's on most prompts (measured: 6 of 6, 16 tokens each).
    assert rows["f16"].agreement >= 5 / 6
    assert rows["f16"].token_agreement >= 0.8 and rows["q8_0"].token_agreement >= 0.5
    assert result.tokenizer_agreement == 1.0

    stock = quantize_file(result.files["f16"], tmp_path / "stock-q8_0.gguf", QUANT_TYPES["q8_0"], threads=1)
    inputs = build_inputs(load_tokenizer(resolve_base("default")), n_prompts=1, new_tokens=1)
    delta = 100 * (gguf_measure(stock, inputs, threads=1).ppl / rows["torch"].ppl - 1)
    print(f"stock q8_0: {delta:+.3f} % ppl vs torch; f16 greedy agreement {rows['f16'].agreement:.0%}")
    # Below 0.5 % would mean the docs' "stock q8_0 misses the target" is stale.
    assert 0.5 < delta < 1.5
    assert abs(rows["q8_0"].delta_vs_torch_pct) < 0.5


def test_keep_f16_leaves_matching_tensors_unquantized(tiny_model_dir, tmp_path):
    from gguf import GGUFReader

    result = export_gguf(str(tiny_model_dir), tmp_path, "q8_0", keep_f16=["attn_v"], name="t", threads=1,
                         log=lambda *_: None)
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(result.files["q8_0"])).tensors}
    assert types["blk.0.attn_v.weight"] == "F16" and types["blk.1.attn_v.weight"] == "F16"
    assert types["blk.0.attn_q.weight"] == "Q8_0"
    assert not (tmp_path / ".t-f16-source.gguf").exists()     # the scratch f16 source is removed
    with pytest.raises(UserError, match="not a valid regular expression"):
        export_gguf(str(tiny_model_dir), tmp_path / "o", "q8_0", keep_f16=["attn_v("])


@pytest.mark.parametrize("rope", [{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                                  {"rope_type": "linear", "factor": 4.0}])
def test_scaled_rope_round_trip(tokenizer, tmp_path, rope):
    """Llama 3.1 (llama3) and linear rope scaling: llama.cpp's logits equal torch's over 40+ positions,
    long enough (original context 16) for the scaled frequencies to matter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.2, rope_scaling=rope, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    result = export_gguf(str(tmp_path / "m"), tmp_path / "out", "f32", threads=1, log=lambda *_: None)
    ids = ids_for(tokenizer, " ".join(TEXTS))
    assert len(ids) > 40
    expected = torch_logits(model, ids).numpy()
    assert np.abs(gguf_logits(result.files["f32"], ids) - expected).max() < 1e-3
