"""The reference a preference objective measures rewards against, made explicit.

Three kinds, chosen by `reference_for`:

- the starting weights with the adapter switched off (a fresh adapter: no second copy in memory);
- a named, frozen adapter: the adapter the run started from (`model.adapter`), loaded a second time
  beside the trainable copy, as TRL does for PEFT models; only the adapter's weights are doubled;
- a frozen copy of the whole model, when training moves the base weights (full fine-tuning,
  Spectrum, Delta-LoRA), so switching an adapter off would not give the starting point back.

Each yields the module to run under no_grad; `describe` is what the run prints.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from tunesmith.errors import ConfigError
from tunesmith.models.adapters import adapters_off, has_adapter
from tunesmith.models.start_adapter import START_ADAPTER, drop_start_adapter

__all__ = ["Reference", "drop_start_adapter", "reference_for", "use_peft_adapter"]


@dataclass
class Reference:
    kind: str                      # "adapter-off", "start-adapter", "copy"
    describe: str
    copy: torch.nn.Module | None = None
    adapter: str = START_ADAPTER   # the peft adapter a "start-adapter" reference runs

    @contextlib.contextmanager
    def run(self, model):
        if self.kind == "copy":
            # The copy was made before the trainer placed the model (accelerate moves it to the GPU).
            device = next(model.parameters()).device
            if next(self.copy.parameters()).device != device:
                self.copy.to(device)
            yield self.copy
        elif self.kind == "start-adapter":
            with use_peft_adapter(model, self.adapter):
                yield model
        else:
            with adapters_off(model):
                yield model


@contextlib.contextmanager
def use_peft_adapter(model, name: str):
    """Run a peft model with adapter `name` active; the trainable adapter is active again after,
    with its requires_grad flags as they were (peft's set_adapter rewrites them)."""
    before = model.active_adapter
    grads = {p: p.requires_grad for p in model.parameters()}
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(before)
        for p, flag in grads.items():
            p.requires_grad_(flag)


@torch.no_grad()
def adapter_starts_at_base(model) -> bool:
    """Whether the fresh adapter leaves the model's outputs unchanged (LoRA's B = 0, IA3's ones): then
    switching it off gives the starting point. Virtual tokens (prompt / prefix tuning) do not, nor does
    DoRA over a 4-bit base (its norms come from dequantized weights; outputs differ by ~1e-4)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    ids = (torch.arange(8, device=device) * 997 + 11)[None] % vocab      # (1, 8) arbitrary ordinary tokens
    was_training = model.training
    model.eval()
    try:
        on = model(input_ids=ids).logits[:, -8:].float()
        with adapters_off(model):
            off = model(input_ids=ids).logits[:, -8:].float()
    finally:
        model.train(was_training)
    return torch.allclose(on, off, atol=1e-5, rtol=1e-5)


def snapshot_peft_adapter(model) -> None:
    """Add a frozen copy of the trainable peft adapter as the START_ADAPTER."""
    model.add_adapter(START_ADAPTER, copy.deepcopy(model.peft_config[model.active_adapter]))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if f".{START_ADAPTER}." in name:
                p.copy_(params[name.replace(f".{START_ADAPTER}.", f".{model.active_adapter}.")])
                p.requires_grad_(False)


def has_start_adapter(model) -> bool:
    return START_ADAPTER in getattr(model, "peft_config", {})


def reference_for(prepared, which: str) -> Reference:
    """The reference of a run: `which` is objective.reference ('auto' or 'base')."""
    model = prepared.model
    moves_base = prepared.kind != "adapter" or prepared.hooks.after_step is not None
    switchable = not moves_base and has_adapter(model)
    if which == "base" and switchable:
        return Reference("adapter-off", "the base model with the adapter off (objective.reference: base)")
    if which == "auto" and has_start_adapter(model):
        return Reference("start-adapter", "the adapter in model.adapter, frozen (loaded beside the trained copy)")
    if switchable:
        if adapter_starts_at_base(model):
            return Reference("adapter-off", "the starting weights: the same model with the adapter off (no second copy)")
        if hasattr(model, "peft_config"):
            snapshot_peft_adapter(model)
            return Reference("start-adapter", "a frozen copy of the fresh adapter (switched off, it would not give the "
                                              "starting outputs: virtual tokens, or DoRA's norms over a 4-bit base)")
    if prepared.kind == "adapter" and not has_adapter(model):
        raise ConfigError("objective.reference: the adapter of this method cannot be switched off, "
                          "so there is no reference without a second model", hint="use objective.name=orpo (no reference)")
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    size = sum(p.numel() * p.element_size() for p in frozen.parameters()) / 2**20
    return Reference("copy", f"a frozen copy of the starting weights ({size:,.0f} MiB more memory: "
                             "this method moves the base weights, so switching an adapter off would not restore them)",
                     copy=frozen)
