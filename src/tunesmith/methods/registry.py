"""The method registry: (model, method config) -> (trainable model, optimizer param groups, hooks, saver).

Every method is a `Method` subclass in its own module, registered with `@register_method`. Methods
that save something other than a PEFT adapter or an HF model folder also register a loader for
their folder format (`register_loader`), so `load_trained` opens any run output.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.errors import ConfigError, UserError
from tunesmith.methods.hooks import TrainingHooks


@dataclass
class Prepared:
    model: torch.nn.Module
    param_groups: list[dict]
    kind: str                     # "adapter" (adapter folder) or "full" (HF model folder)
    mergeable: bool = True
    # False when the method changes the forward in ways the hidden-states-only loss path skips
    # (virtual tokens, prefixes): the trainer then calls the model's own forward.
    fast_loss: bool = True
    # False when each row must hold one example: virtual tokens / prefixes are prepended per row,
    # and the model's own forward (fast_loss=False) would let packed examples attend to each other.
    packing: bool = True
    hooks: TrainingHooks = field(default_factory=TrainingHooks)
    saver: Callable | None = None  # (model, out_dir) -> None, for methods whose folder is not save_pretrained's

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def save(self, out_dir: Path, tokenizer=None) -> None:
        if self.saver is not None:
            self.saver(self.model, Path(out_dir))
        else:
            self.model.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)


# Keys of MethodConfig that only some methods read; setting one on a method that ignores it is a
# config error rather than a silently dead line. (The shared adapter-shape keys r, alpha, dropout
# and target_modules are exempt, so switching method.name alone never breaks a config.)
METHOD_OPTIONS = {
    "layers_to_train", "trainable_modules", "quant_double", "quant_type", "rslora", "dora",
    "loraplus_lr_ratio", "lora_fa", "vera_r", "ia3_feedforward_modules", "num_virtual_tokens",
    "prompt_init_text", "delta_lora_lambda", "delta_lora_start", "bottleneck_size",
    "bottleneck_activation", "spectrum_top_percent",
}


class Method:
    name: str = ""
    summary: str = ""
    mergeable: bool = True
    gguf_exportable: bool = True
    options: frozenset = frozenset()   # MethodConfig keys this method reads (besides `name`)
    base_bits: int = 0                 # 4 for a quantized base (memory estimate); 0 = the load dtype

    def load_options(self, cfg) -> dict:
        """Extra arguments for `load_model` (quantization for QLoRA)."""
        return {}

    def check(self, cfg) -> None:
        """Raise ConfigError for keys this method does not use or combinations that make no sense."""
        defaults = type(cfg)()
        for key in sorted(METHOD_OPTIONS - set(self.options)):
            if key in type(cfg).model_fields and getattr(cfg, key) != getattr(defaults, key):
                users = sorted(n for n, m in METHODS.items() if key in m.options)
                raise ConfigError(f"method.{key} is set but method '{self.name}' does not use it",
                                  hint=f"method.{key} applies to: {', '.join(users) or 'no method'}; remove it or change method.name")

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
    method = get_method(method_cfg.name)
    method.check(method_cfg)
    return method.prepare(model, method_cfg, lr)


def check_run(run_cfg) -> Method:
    """Validate the method part of a run config before any data or weights are loaded."""
    method = get_method(run_cfg.method.name)
    method.check(run_cfg.method)
    if run_cfg.output.merge and not method.mergeable:
        raise ConfigError(f"output.merge: method '{method.name}' cannot be merged into the base weights",
                          hint="set output.merge=false; use the adapter folder with `tunesmith eval --adapter`")
    return method


def trainable_groups(model, lr: float) -> list[dict]:
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]


# --- trained-folder loaders --------------------------------------------------------------------

# marker file -> loader(base_model, folder) -> model with the trained method applied
LOADERS: dict[str, Callable] = {}
LOADER_METHODS: dict[str, str] = {}   # marker file -> the method whose folders carry it


def register_loader(marker: str, loader: Callable, method: str | None = None) -> None:
    LOADERS[marker] = loader
    if method:
        LOADER_METHODS[marker] = method


def folder_method(folder: Path) -> str | None:
    """The method that wrote a run's adapter folder (from tunesmith.json), if recorded."""
    ours = Path(folder) / "tunesmith.json"
    if ours.is_file():
        try:
            meta = json.loads(ours.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{ours}: not valid JSON ({exc})", hint="restore it from the run, or delete it") from None
        return meta.get("method") if isinstance(meta, dict) else None
    return None


def load_trained(base_model, folder: str | Path):
    """Apply a saved adapter folder (PEFT layout or one of ours) to a freshly loaded base model."""
    folder = Path(folder)
    for marker, loader in LOADERS.items():
        if (folder / marker).is_file():
            return loader(base_model, folder)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(folder))
    raise UserError(f"{folder}: not an adapter folder (no adapter_config.json or {', '.join(LOADERS) or 'marker'})",
                    hint="pass the 'adapter' folder of a run; a full fine-tune's 'model' folder is a base model (--model)")


# peft adapter types that live outside the weights (virtual tokens, KV prefixes, gated prompts)
# and so have nothing to merge; named as our method where we have one.
UNMERGEABLE_PEFT_TYPES = {"PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt", "P_TUNING": "p_tuning",
                          "MULTITASK_PROMPT_TUNING": "multitask_prompt_tuning", "ADAPTION_PROMPT": "adaption_prompt",
                          "CPT": "cpt"}


def peft_adapter_type(folder: Path) -> str | None:
    """peft_type from a folder's adapter_config.json (a folder plain peft saved has no tunesmith.json)."""
    path = folder / "adapter_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})", hint="re-save the adapter with save_pretrained") from None
    kind = cfg.get("peft_type") if isinstance(cfg, dict) else None
    return str(kind).upper() if kind else None


def require_mergeable(folder: str | Path, action: str = "merged") -> None:
    """Refuse, with the reason, to merge/export an adapter whose method cannot fold into the weights."""
    folder = Path(folder)
    name = folder_method(folder)
    peft_type = peft_adapter_type(folder)
    # Every registered folder format (bottleneck_config.json ...) adds layers of its own.
    unmergeable = [LOADER_METHODS.get(m, m) for m in LOADERS if (folder / m).is_file()]
    if peft_type in UNMERGEABLE_PEFT_TYPES:
        unmergeable.append(UNMERGEABLE_PEFT_TYPES[peft_type])
    if name in METHODS and not METHODS[name].mergeable:
        unmergeable.insert(0, name)
    if unmergeable:
        what = unmergeable[0]
        raise UserError(f"{folder}: a '{what}' adapter cannot be folded into the base weights, so it cannot be {action}",
                        hint="it adds layers (or virtual tokens) that a plain model has no place for; "
                             "evaluate or serve it as an adapter on its base model")
