"""Load a resolved base model and its tokenizer."""

from __future__ import annotations

import torch

from tunesmith.models.resolve import ResolvedModel, resolve_base

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}


def no_hub_kernels() -> dict:
    """from_pretrained keywords that keep transformers from swapping layers for kernels from the Hugging Face hub.

    transformers 5 does so by default whenever the `kernels` package is installed (it is one of its
    requirements): on a CUDA device it downloads kernels (rotary, RMSNorm, ...) when a model is loaded or
    switched to training, which offline fails and online is a run-time download with other numerics. On CPU
    the mapping is empty. Older transformers have no such switch and get no keyword."""
    from transformers import PreTrainedModel

    return {"use_kernels": False} if hasattr(PreTrainedModel, "set_use_kernels") else {}


def _as_resolved(base: str | ResolvedModel) -> ResolvedModel:
    return base if isinstance(base, ResolvedModel) else resolve_base(base)


def load_tokenizer(base: str | ResolvedModel, template: str | None = "auto"):
    from transformers import AutoTokenizer

    from tunesmith.data.templates import apply_named_template

    resolved = _as_resolved(base)
    tok = AutoTokenizer.from_pretrained(str(resolved.path))
    if tok.pad_token is None:
        # Padding never reaches the loss (labels are -100 there), so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    apply_named_template(tok, template)
    return tok


def load_model(base: str | ResolvedModel, dtype: str = "fp32", quantization: dict | None = None):
    """Load a causal LM. `quantization` = {"bits": 4, "quant_type": "nf4", "double": True} for QLoRA."""
    from transformers import AutoModelForCausalLM

    resolved = _as_resolved(base)
    kwargs: dict = {"dtype": DTYPES[dtype], "attn_implementation": "sdpa", **no_hub_kernels()}
    if quantization:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if quantization.get("compute_dtype", "bf16") == "bf16" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.get("quant_type", "nf4"),
            bnb_4bit_use_double_quant=quantization.get("double", True),
            bnb_4bit_compute_dtype=compute,
            # lm_head stays in full precision: it is tied to the embeddings in small models.
            llm_int8_skip_modules=["lm_head"],
        )
    model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs)
    return model


def model_device(model) -> torch.device:
    return next(model.parameters()).device
