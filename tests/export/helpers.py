"""Shared pieces of the export tests: tiny LoRA adapters with non-zero B on the tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out: Path, *, seed: int = 1, r: int = 4, alpha: int = 8,
                 targets: list[str] | None = None, std: float = 0.3, rslora: bool = False) -> Path:
    """A LoRA adapter folder as `tunesmith train` writes it; B is random so the adapter changes outputs."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    model = load_model(str(base_dir))
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or ALL_LINEARS,
                                                  use_rslora=rslora, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)
    peft_model.save_pretrained(out)
    (out / "tunesmith.json").write_text(json.dumps({"base": str(base_dir), "method": "lora"}))
    return out


def ids_for(tokenizer, text: str = "The lighthouse keeper wrote 3 lines in the log at 1871.") -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def torch_logits(model, ids: list[int]) -> torch.Tensor:
    model.eval()
    return model(torch.tensor([ids])).logits[0].float()
