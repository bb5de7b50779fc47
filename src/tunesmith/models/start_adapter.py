"""model.adapter: start a run from a trained adapter instead of a fresh one.

The method builds its fresh adapter as usual ("default"); the folder is then loaded beside it as a
frozen peft adapter and its weights copied into the trainable one, so the run continues exactly from
it. The frozen copy stays loaded for objectives that use it as their reference (DPO / KTO continuing
from an SFT adapter) and is dropped otherwise. The method's options must give the same adapter
shapes as the folder's (r, target_modules); a mismatch names the first parameters that differ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.errors import ConfigError

START_ADAPTER = "reference"


def check_start_adapter(folder: str | Path, method) -> None:
    """What can be checked before any weights load: the folder, and that the method trains an adapter."""
    if method.kind != "adapter":
        raise ConfigError(f"model.adapter: method '{method.name}' trains the model's own weights, not an adapter",
                          hint="merge the adapter into a model folder (`tunesmith merge`) and use that folder as model.base")
    if not (Path(folder) / "adapter_config.json").is_file():
        raise ConfigError(f"model.adapter: {folder} is not a PEFT adapter folder (no adapter_config.json)",
                          hint="point it at a run's adapter/ folder")


def load_start_adapter(prepared, folder: str | Path) -> None:
    folder = Path(folder)
    model = prepared.model
    if not hasattr(model, "load_adapter") or not hasattr(model, "peft_config"):
        raise ConfigError(f"model.adapter: this method's model is not a peft model, so it cannot start from {folder}",
                          hint="start from an adapter with a peft method (lora, dora, rslora, qlora, ia3, vera, prompt, prefix)")
    try:
        model.load_adapter(str(folder), adapter_name=START_ADAPTER, is_trainable=False)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"model.adapter: {folder} does not fit this method's adapter: {exc}",
                          hint="set the method options (method.name, r, target_modules) the adapter was trained with") from None
    params = dict(model.named_parameters())
    trained = {n: p for n, p in params.items() if p.requires_grad}
    mismatched, copied = [], 0
    with torch.no_grad():
        for name, p in trained.items():
            source = params.get(name.replace(".default.", f".{START_ADAPTER}."))
            if source is None or source.shape != p.shape:
                mismatched.append(f"{name} {tuple(p.shape)} vs {tuple(source.shape) if source is not None else 'missing'}")
                continue
            p.copy_(source)
            copied += 1
    if mismatched or not copied:
        model.delete_adapter(START_ADAPTER)
        raise ConfigError(f"model.adapter: {folder} has other shapes than this run's adapter: "
                          + "; ".join(mismatched[:3]) + (f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""),
                          hint="set the method options (r, target_modules, method.name) the adapter was trained with")


def drop_start_adapter(model) -> None:
    if START_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(START_ADAPTER)
