"""Bottleneck (Houlsby) adapters: after each decoder block's attention and MLP, a small residual
network  h + up(act(down(h)))  with down: H -> size, up: size -> H, up initialised to zero so
training starts from the base model exactly.

The adapters add layers a plain checkpoint has no slot for, so they cannot be merged or exported
to GGUF. They are saved in their own folder format (bottleneck_config.json + safetensors) and
re-applied to a fresh base by `load_bottleneck` (registered as the loader for that marker).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from tunesmith.errors import ConfigError, UserError
from tunesmith.methods.options import MethodOptions
from tunesmith.methods.registry import Method, Prepared, register_loader, register_method, trainable_groups
from tunesmith.models.adapters import register_adapter_switch, unwrap

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_model.safetensors"
ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


class BottleneckOptions(MethodOptions):
    bottleneck_size: int = Field(64, gt=0, description="bottleneck: hidden size of each adapter")
    bottleneck_activation: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="bottleneck: nonlinearity between down- and up-projection")


class BottleneckAdapter(torch.nn.Module):
    def __init__(self, hidden: int, size: int, activation: str):
        super().__init__()
        self.down = torch.nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(size, hidden)
        self.enabled = True
        if not self.up.weight.is_meta:
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

    def forward(self, h):                     # (B, T, H) -> (B, T, H)
        if not self.enabled:
            return h
        return h + self.up(self.act(self.down(h)))


@contextlib.contextmanager
def adapters_off(model):
    """The base model's forward (models.adapters_off calls this for bottleneck models)."""
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    for m in adapters:
        m.enabled = False
    try:
        yield model
    finally:
        for m in adapters:
            m.enabled = True


def has_bottleneck(model) -> bool:
    return any(isinstance(m, BottleneckAdapter) for m in model.modules())


register_adapter_switch(has_bottleneck, adapters_off)


def _after_block_hook(module, args, output):
    # Attention blocks return (hidden, attn_weights, ...); MLPs return the hidden state alone.
    if isinstance(output, tuple):
        return (module.bottleneck(output[0]), *output[1:])
    return module.bottleneck(output)


def _child(layer, names):
    for name in names:
        if isinstance(getattr(layer, name, None), torch.nn.Module):
            return name
    return None


def attach(model, size: int, activation: str) -> list[str]:
    """Insert adapters; returns the names of the blocks that got one."""
    from tunesmith.methods.full import decoder_layers

    hidden = model.config.hidden_size
    inner = unwrap(model)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    placed = []
    for i, layer in enumerate(decoder_layers(inner)):
        for names in (ATTENTION_NAMES, MLP_NAMES):
            child = _child(layer, names)
            if child is None:
                raise ConfigError(f"method bottleneck: decoder layer {i} has none of the blocks {', '.join(names)}",
                                  hint="this architecture is not supported by bottleneck adapters; use lora")
            block = getattr(layer, child)
            block.bottleneck = BottleneckAdapter(hidden, size, activation).to(device=device, dtype=dtype)
            block.register_forward_hook(_after_block_hook)
            placed.append(f"layers.{i}.{child}")
    return placed


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if ".bottleneck." in n}


def load_bottleneck(base_model, folder: Path):
    from safetensors.torch import load_file

    cfg = json.loads((folder / CONFIG_FILE).read_text())
    attach(base_model, cfg["size"], cfg["activation"])
    state = load_file(folder / WEIGHTS_FILE)
    params = dict(base_model.named_parameters())
    missing = set(k for k in params if ".bottleneck." in k) - set(state)
    unknown = set(state) - set(params)
    if missing or unknown:
        raise UserError(f"{folder}: bottleneck weights do not fit this base model "
                        f"({len(missing)} missing, {len(unknown)} unexpected tensors)",
                        hint=f"load it on the base it was trained on: {cfg.get('base_model') or 'see tunesmith.json'}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    return base_model


register_loader(CONFIG_FILE, load_bottleneck, method="bottleneck")


@register_method
class Bottleneck(Method):
    name = "bottleneck"
    summary = "Houlsby adapters (down, nonlinearity, up; up starts at zero) after attention and MLP; not mergeable"
    mergeable = False
    gguf_exportable = False
    options = BottleneckOptions
    order = 90

    def prepare(self, model, cfg, lr):
        from safetensors.torch import save_file

        self.check(cfg)
        for p in model.parameters():
            p.requires_grad_(False)
        placed = attach(model, cfg.bottleneck_size, cfg.bottleneck_activation)
        base_name = getattr(model, "name_or_path", None)

        def save(model, out_dir: Path) -> None:
            save_file(adapter_state(model), out_dir / WEIGHTS_FILE)
            (out_dir / CONFIG_FILE).write_text(json.dumps({
                "method": "bottleneck", "size": cfg.bottleneck_size, "activation": cfg.bottleneck_activation,
                "hidden_size": model.config.hidden_size, "blocks": placed, "base_model": base_name}, indent=2))

        return Prepared(model, trainable_groups(model, lr), kind=self.kind, saver=save)
