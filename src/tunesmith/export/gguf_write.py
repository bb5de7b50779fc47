"""Write a torch Llama-family model, or a LoRA adapter for one, as GGUF with gguf-py's GGUFWriter.

Every file is written under a temporary name in the target folder and renamed when complete.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import UserError
from tunesmith.export.gguf_arch import (
    ArchSpec,
    arch_for,
    gguf_tensor_name,
    permute_rows,
    qk_heads,
    write_hparams,
    write_rope,
)

# torch -> numpy dtype of 2-D weights per file type; norms and biases always stay f32 (llama.cpp's
# kernels expect them so, and they are a rounding error in the file size).
MATRIX_DTYPES = {"f32": np.float32, "f16": np.float16}


@contextlib.contextmanager
def temp_target(final: Path):
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@functools.lru_cache(maxsize=8)
def _name_fn(spec: ArchSpec, n_blocks: int):
    return functools.partial(gguf_tensor_name, spec=spec, n_blocks=n_blocks)


def model_tensors(model, spec: ArchSpec):
    """(gguf name, float32 numpy array) for every tensor llama.cpp needs, q/k permuted where required."""
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    name_of = _name_fn(spec, int(config.num_hidden_layers))
    for hf_name, tensor in model.state_dict().items():
        # A peft-wrapped base (for --lora-gguf) keeps its own weights under '.base_layer.'.
        if ".lora_" in hf_name or "lora_magnitude" in hf_name:
            continue
        hf_name = hf_name.replace(".base_layer.", ".")
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = name_of(hf_name)
        if name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor '{hf_name}' ({config.model_type})",
                            hint="this checkpoint has parts the converter does not know; export the merged model "
                                 "with llama.cpp's convert_hf_to_gguf.py")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        heads = qk_heads(hf_name, config)
        if spec.permute_qk and heads:
            data = permute_rows(data, heads)
        yield name, data


def write_model_gguf(model, tokenizer, model_dir: Path, out_path: Path, ftype: str = "f16",
                     name: str | None = None, tokenizer_pre: str | None = None) -> Path:
    """A complete GGUF (hyper-parameters, tokenizer, chat template, weights) for f32/f16/bf16."""
    import gguf

    from tunesmith.export.gguf_vocab import write_vocab

    spec = arch_for(model.config)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16}
    with temp_target(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), spec.gguf_arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or Path(model_dir).name)
        write_hparams(writer, model.config)
        writer.add_file_type(file_types[ftype])
        write_vocab(writer, tokenizer, Path(model_dir), int(model.config.vocab_size), pre=tokenizer_pre)
        for tname, data in model_tensors(model, spec):
            if data.ndim == 1:
                writer.add_tensor(tname, data.astype(np.float32))
            elif ftype == "bf16":
                packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
                writer.add_tensor(tname, packed, raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                writer.add_tensor(tname, data.astype(MATRIX_DTYPES[ftype]))
        write_rope(writer, model.config)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)


# --- LoRA adapters ------------------------------------------------------------------------------

def lora_tensors(peft_model, adapter: str = "default"):
    """(gguf base name, A (r, in), B (out, r) with peft's scale folded in) per LoRA-wrapped linear."""
    from peft.tuners.lora import LoraLayer

    config = peft_model.peft_config[adapter]
    if getattr(config, "peft_type", None) is None or config.peft_type.value != "LORA":
        raise UserError(f"--lora-gguf: a {getattr(config, 'peft_type', '?')} adapter is not a LoRA; "
                        "llama.cpp adapters are LoRA only", hint="drop --lora-gguf to export the merged model")
    if getattr(config, "use_dora", False):
        raise UserError("--lora-gguf: DoRA adapters rescale each output column and have no llama.cpp adapter form",
                        hint="drop --lora-gguf: the adapter is merged into the exported model instead")
    base = peft_model.get_base_model()
    spec = arch_for(base.config)
    name_of = _name_fn(spec, int(base.config.num_hidden_layers))
    tied = bool(getattr(base.config, "tie_word_embeddings", False))
    for module_name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if not hasattr(module.lora_A[adapter], "weight"):
            raise UserError(f"--lora-gguf: LoRA on '{module_name}' (an embedding) has no llama.cpp adapter form",
                            hint="export without --lora-gguf (merged)")
        hf_name = f"{module_name}.weight"
        if tied and hf_name == "lm_head.weight":
            raise UserError("--lora-gguf: the adapter trains lm_head, which this model ties to the embeddings",
                            hint="export without --lora-gguf (merged)")
        gguf_name = name_of(hf_name)
        if gguf_name is None:
            raise UserError(f"--lora-gguf: no llama.cpp name for adapted module '{module_name}'")
        a = module.lora_A[adapter].weight.detach().float().cpu().numpy()            # (r, in)
        b = module.lora_B[adapter].weight.detach().float().cpu().numpy()            # (out, r)
        b = b * float(module.scaling[adapter])
        heads = qk_heads(hf_name, base.config)
        if spec.permute_qk and heads:
            b = permute_rows(b, heads)   # B's rows are the projection's output rows
        yield gguf_name, a, b


def write_lora_gguf(peft_model, out_path: Path, adapter: str = "default", name: str | None = None) -> Path:
    """A llama.cpp LoRA adapter GGUF (general.type=adapter, <tensor>.lora_a / .lora_b).

    llama.cpp scales each pair by alpha / rank; peft's scaling (alpha/r, alpha/sqrt(r) for rsLoRA,
    per-module patterns) is folded into B, so alpha is written as the rank to make that factor 1.
    """
    import gguf

    spec = arch_for(peft_model.get_base_model().config)
    pairs = list(lora_tensors(peft_model, adapter))
    if not pairs:
        raise UserError("--lora-gguf: the adapter has no LoRA weights on linear layers")
    ranks = {a.shape[0] for _, a, _ in pairs}
    with temp_target(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), spec.gguf_arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name or Path(out_path).stem)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        # One rank for all: alpha = r gives scale 1. Mixed ranks: llama.cpp treats alpha 0 as scale 1.
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(ranks.pop()) if len(ranks) == 1 else 0.0)
        for gname, a, b in pairs:
            writer.add_tensor(f"{gname}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
            writer.add_tensor(f"{gname}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)

