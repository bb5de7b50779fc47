"""Read an adapter folder (PEFT layout, or one of tunesmith's own formats) and decide how it is served.

Plain LoRA (and rsLoRA) on linear layers goes to the batched engine: its A/B matrices join the
per-row stacks in `generation.lora_batch`. Everything else peft can load (DoRA, IA3, VeRA, prompt/prefix
tuning, LoRA with modules_to_save ...) and every folder format a tunesmith method registers a loader
for (bottleneck adapters) is served by the fallback path, one adapter per batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.adapter_record import read_record
from tunesmith.errors import UserError

PEFT_PREFIX = "base_model.model."
PEFT_CONFIG = "adapter_config.json"


@dataclass
class AdapterSpec:
    name: str
    path: Path
    config: dict
    base: str | None                  # what the adapter says it was trained on
    engine: str                       # "lora" (batched per row) or "peft" (fallback)
    why_fallback: str = ""
    rank: int = 0
    loop_limit: int | None = None     # recorded by `tunesmith train` from the training answers (loops.py)
    # module name -> (A (in, r), B (r, out) with the scale folded in); only for engine == "lora"
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def method(self) -> str:
        return config_method(self.config).lower()


def config_method(config: dict) -> str:
    # peft writes peft_type; our own formats (bottleneck_config.json) write method.
    return str(config.get("peft_type") or config.get("method") or "?")


def adapter_markers() -> tuple[str, ...]:
    """The config files that make a folder an adapter, in the order `load_trained` tries them."""
    import tunesmith.methods  # noqa: F401  (importing the methods registers their folder formats)
    from tunesmith.methods.registry import LOADERS

    return (*LOADERS, PEFT_CONFIG)


def read_adapter_config(path: Path) -> dict:
    for marker in adapter_markers():
        cfg_file = path / marker
        try:
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except json.JSONDecodeError as exc:
            raise UserError(f"{cfg_file}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except UnicodeDecodeError:
            raise UserError(f"{cfg_file}: not a text file (invalid UTF-8)") from None
        if not isinstance(config, dict):
            raise UserError(f"{cfg_file}: expected a JSON object, got {type(config).__name__}")
        return config
    raise UserError(f"{path}: not an adapter folder (no {' or '.join(adapter_markers())})",
                    hint="point at the 'adapter' folder inside a tunesmith run")


def adapter_base_name(config: dict, meta: dict | None) -> str | None:
    """`meta`: the folder's tunesmith.json record (adapter_record.read_record), whose base wins whenever it exists."""
    if meta is not None:
        return meta.get("base")
    return config.get("base_model_name_or_path") or config.get("base_model")


def fallback_reason(config: dict, path: Path) -> str:
    """Why this adapter cannot join the per-row LoRA stacks ('' when it can)."""
    if config.get("peft_type") != "LORA":
        return f"method {config_method(config)}"
    checks = {
        "DoRA (use_dora)": config.get("use_dora"),
        "fan_in_fan_out layers": config.get("fan_in_fan_out"),
        "modules_to_save": config.get("modules_to_save"),
        f"bias='{config.get('bias')}'": config.get("bias", "none") != "none",
        "rank_pattern/alpha_pattern": config.get("rank_pattern") or config.get("alpha_pattern"),
        "trainable_token_indices": config.get("trainable_token_indices"),
        "no adapter_model.safetensors": not (path / "adapter_model.safetensors").is_file(),
    }
    return ", ".join(k for k, v in checks.items() if v)


def load_lora_weights(path: Path, config: dict, dtype: torch.dtype) -> tuple[dict, int]:
    """{module name: (A (in, r), B (r, out) * scale)} from adapter_model.safetensors, and the rank."""
    from safetensors.torch import load_file

    weights_file = path / "adapter_model.safetensors"
    try:
        tensors = load_file(str(weights_file))
    except Exception as exc:  # safetensors raises its own error type for a truncated or garbled file
        raise UserError(f"{weights_file}: not a readable safetensors file ({exc})",
                        hint="copy or save the adapter again; the file is damaged or incomplete") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0]
                module = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
                pairs.setdefault(module, {})[part] = value
                break
        else:
            raise UserError(f"{path}: unexpected tensor '{key}' in a LoRA adapter",
                            hint="this adapter needs the peft fallback; re-save it with plain LoRA")
    r = int(config["r"])
    alpha = float(config.get("lora_alpha", r))
    scale = alpha / (r ** 0.5) if config.get("use_rslora") else alpha / r
    weights = {}
    for module, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise UserError(f"{path}: module '{module}' has only {', '.join(ab)}")
        a, b = ab["lora_A"], ab["lora_B"]          # peft stores A (r, in) and B (out, r)
        weights[module] = (a.t().contiguous().to(dtype), (b.t() * scale).contiguous().to(dtype))
    return weights, r


def inspect_adapter(name: str, path: Path, dtype: torch.dtype = torch.float32) -> AdapterSpec:
    path = Path(path)
    config = read_adapter_config(path)
    reason = fallback_reason(config, path)
    meta = read_record(path)
    limit = (meta or {}).get("loop_limit")
    spec = AdapterSpec(name=name, path=path, config=config, base=adapter_base_name(config, meta),
                       engine="peft" if reason else "lora", why_fallback=reason,
                       loop_limit=limit if isinstance(limit, int) and limit > 0 else None)
    if not reason:
        spec.weights, spec.rank = load_lora_weights(path, config, dtype)
    return spec
