"""Merge an adapter into its base: a plain HF model folder that transformers loads without peft."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.errors import UserError
from tunesmith.io_utils import atomic_dir

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def adapter_base(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on: tunesmith's own record first ('default' stays
    portable across machines), then peft's absolute path."""
    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.is_file():
        raise UserError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")
    ours = Path(adapter_dir) / "tunesmith.json"
    if ours.is_file():
        return json.loads(ours.read_text()).get("base")
    return json.loads(cfg.read_text()).get("base_model_name_or_path")


def merge_model(peft_model, dtype: str = "fp32"):
    """Fold the adapter into (a copy of) the base weights and return a plain transformers model."""
    if not hasattr(peft_model, "merge_and_unload"):
        raise UserError("this adapter's method cannot be merged into the base weights",
                        hint="serve or evaluate it as an adapter instead")
    merged = peft_model.merge_and_unload()
    return merged.to(DTYPES[dtype])


def save_merged(peft_model, tokenizer, out_dir: Path, dtype: str = "fp32") -> Path:
    merged = merge_model(peft_model, dtype)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str = "fp32") -> Path:
    """Load base (fp32, never 4-bit) + adapter from disk, merge, save."""
    from peft import PeftModel

    from tunesmith.models import load_model, load_tokenizer, resolve_base

    adapter_dir = Path(adapter_dir)
    base = base or adapter_base(adapter_dir)
    if not base:
        raise UserError(f"{adapter_dir}: the adapter does not name its base model", hint="pass --base")
    resolved = resolve_base(base)
    tokenizer = load_tokenizer(resolved) if not (adapter_dir / "tokenizer_config.json").exists() else \
        load_tokenizer_from(adapter_dir)
    model = load_model(resolved, dtype="fp32")
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return save_merged(peft_model, tokenizer, Path(out_dir), dtype)


def load_tokenizer_from(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
