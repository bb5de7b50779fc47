"""Merge an adapter into its base: a plain HF model folder that transformers loads without peft.

A QLoRA adapter is never folded into the 4-bit weights (peft would dequantize, add B·A and quantize
again, rounding most of the update away). The base is reloaded in fp32 from the folder peft recorded,
the trained adapter tensors are copied onto it, and the merge happens there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.adapter_record import read_record
from tunesmith.errors import UserError
from tunesmith.io_utils import atomic_dir, check_not_inside, check_replaceable

# A merged model replaces only a previous HF model folder, never an adapter or a run folder.
MODEL_MARKERS = ("config.json",)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{dtype}'", hint=f"use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def adapter_base(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on: tunesmith's own record first ('default' stays
    portable across machines), then peft's absolute path."""
    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.is_file():
        raise UserError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)",
                        hint="pass the 'adapter' folder of a run (it holds adapter_config.json)")
    base = (read_record(adapter_dir) or {}).get("base")
    if base:
        return base
    return json.loads(cfg.read_text()).get("base_model_name_or_path")


def is_quantized(model) -> bool:
    """True when any linear layer of the (peft-wrapped) model holds bitsandbytes 4/8-bit weights."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is not None and type(weight).__name__ in ("Params4bit", "Int8Params"):
            return True
    return False


def full_precision_copy(peft_model):
    """The same adapter on an fp32 copy of the base, loaded from the folder the base came from."""
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

    from tunesmith.models import load_model

    name = peft_model.active_adapter if isinstance(peft_model.active_adapter, str) else peft_model.active_adapter[0]
    config = peft_model.peft_config[name]
    base_path = config.base_model_name_or_path
    if not base_path or not Path(base_path).is_dir():
        raise UserError(f"cannot reload the fp32 base '{base_path}' of this 4-bit model to merge into",
                        hint="save the adapter and run `tunesmith merge --adapter DIR --base MODEL`")
    state = get_peft_model_state_dict(peft_model, adapter_name=name)
    base = load_model(str(base_path), dtype="fp32")
    vocab = peft_model.get_input_embeddings().num_embeddings
    if base.get_input_embeddings().num_embeddings != vocab:
        base.resize_token_embeddings(vocab)
    fresh = PeftModel(base, config, adapter_name=name)
    set_peft_model_state_dict(fresh, state, adapter_name=name)
    return fresh


def merge_model(peft_model, dtype: str = "fp32"):
    """Fold the adapter into (a copy of) the base weights and return a plain transformers model."""
    check_dtype(dtype)
    if not hasattr(peft_model, "merge_and_unload"):
        raise UserError("this adapter's method cannot be merged into the base weights",
                        hint="serve or evaluate it as an adapter instead")
    if is_quantized(peft_model):
        peft_model = full_precision_copy(peft_model)
    merged = peft_model.merge_and_unload()
    return merged.to(DTYPES[dtype])


def save_merged(peft_model, tokenizer, out_dir: Path, dtype: str = "fp32") -> Path:
    merged = merge_model(peft_model, dtype)
    with atomic_dir(out_dir, MODEL_MARKERS) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def load_adapter_model(adapter_dir: str | Path, base: str | None = None):
    """(peft model on an fp32 base, tokenizer, base name) for an adapter folder; QLoRA adapters too,
    since their base is loaded unquantized here."""
    from tunesmith.methods.registry import load_trained, require_mergeable
    from tunesmith.models import load_model, load_tokenizer, resolve_base

    adapter_dir = Path(adapter_dir)
    require_mergeable(adapter_dir)  # before adapter_base: a bottleneck folder has no adapter_config.json
    base = base or adapter_base(adapter_dir)
    if not base:
        raise UserError(f"{adapter_dir}: the adapter does not name its base model", hint="pass --base")
    resolved = resolve_base(base)
    tokenizer = load_tokenizer_from(adapter_dir) if (adapter_dir / "tokenizer_config.json").exists() \
        else load_tokenizer(resolved)
    model = load_model(resolved, dtype="fp32")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    try:
        peft_model = load_trained(model, adapter_dir)
    except (RuntimeError, ValueError) as exc:  # size mismatch or missing modules: trained on another model
        raise UserError(f"{adapter_dir}: adapter does not fit base model '{base}': {str(exc).splitlines()[0]}",
                        hint="pass the base it was trained on with --base") from exc
    return peft_model, tokenizer, base


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str = "fp32") -> Path:
    """Load base (fp32, never 4-bit) + adapter from disk, merge, save."""
    from tunesmith.models import resolve_base

    check_dtype(dtype)
    check_not_inside(out_dir, [adapter_dir], option="-o/--out")
    check_replaceable(out_dir, MODEL_MARKERS)
    peft_model, tokenizer, base = load_adapter_model(adapter_dir, base)
    # Writing over the base folder would replace the model the merge was made from.
    check_not_inside(out_dir, [resolve_base(base).path], option="-o/--out")
    return save_merged(peft_model, tokenizer, Path(out_dir), dtype)


def load_tokenizer_from(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
