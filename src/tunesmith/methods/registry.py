"""The method registry: (model, method config) -> (trainable model, optimizer param groups, saver)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tunesmith.errors import ConfigError


@dataclass
class Prepared:
    model: torch.nn.Module
    param_groups: list[dict]
    kind: str                     # "adapter" (PEFT folder) or "full" (HF model folder)
    mergeable: bool = True
    # False when the method changes the forward in ways the hidden-states-only loss path skips
    # (virtual tokens, prefixes): the trainer then calls the model's own forward.
    fast_loss: bool = True
    hooks: dict[str, Callable] = field(default_factory=dict)  # e.g. "after_step"

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def save(self, out_dir: Path, tokenizer=None) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)


class Method:
    name: str = ""
    summary: str = ""
    mergeable: bool = True
    gguf_exportable: bool = True

    def load_options(self, cfg) -> dict:
        """Extra arguments for `load_model` (quantization for QLoRA)."""
        return {}

    def prepare(self, model, cfg, lr: float) -> Prepared:
        raise NotImplementedError


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        guess = difflib.get_close_matches(name, list(METHODS), n=1)
        extra = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise ConfigError(f"method.name: unknown method '{name}'{extra}", hint=f"available: {', '.join(METHODS)}")
    return METHODS[name]


def prepare_method(model, method_cfg, lr: float) -> Prepared:
    return get_method(method_cfg.name).prepare(model, method_cfg, lr)


def trainable_groups(model, lr: float) -> list[dict]:
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
