"""The method registry: name -> (options model, `Method`), and the single entry that turns (model,
method options) into (trainable model, optimizer param groups, hooks, saver).

Every method is a `Method` subclass in its own module of this package, naming its options model
(`tunesmith.methods.options`) and registered with `@register_method`; importing the package imports
every module (`discover`), so a new method is one new file. Methods that save something other than
a PEFT adapter or an HF model folder also register a loader for their folder format
(`register_loader`), so `load_trained` opens any run output.
"""

from __future__ import annotations

import difflib
import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from tunesmith.errors import ConfigError, UserError
from tunesmith.methods.hooks import TrainingHooks
from tunesmith.methods.options import SHARED_KEYS, AdapterShape, MethodOptions, option_keys

if TYPE_CHECKING:
    import torch


@dataclass
class Prepared:
    model: torch.nn.Module
    param_groups: list[dict]
    kind: str                     # "adapter" (adapter folder) or "full" (HF model folder)
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

    def save(self, out_dir: Path, tokenizer=None, state_dict: dict | None = None) -> None:
        """`state_dict`: whole tensors to save instead of the model's own (gathered from sharded training;
        methods with their own saver are refused there, see train.distributed.Layout.check)."""
        if self.saver is not None:
            self.saver(self.model, Path(out_dir))
        else:
            self.model.save_pretrained(out_dir, safe_serialization=True,
                                       **({"state_dict": state_dict} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)


class Method:
    name: str = ""
    summary: str = ""
    options: type[MethodOptions] = MethodOptions   # the keys of `method:` this method takes
    order: int = 1000                  # listing position in `tunesmith methods` and the docs, lowest first
    kind: str = "adapter"              # what a run saves: "adapter" (adapter folder) or "full" (HF model folder)
    mergeable: bool = True
    gguf_exportable: bool = True
    base_bits: int = 0                 # 4 for a quantized base (memory estimate); 0 = the load dtype
    # train.lr "auto": the peak rate at which this method learns on the default model (hidden 576),
    # measured with scripts/probe_method_lr.py; train/auto.py scales it for wider models.
    default_lr: float = 1e-3

    def load_options(self, cfg) -> dict:
        """Extra arguments for `load_model` (quantization for QLoRA)."""
        return {}

    def check(self, cfg) -> None:
        """Raise ConfigError for combinations of this method's options that make no sense.

        Keys the method does not take never get here: validating the `method:` section refuses them."""
        if not isinstance(cfg, self.options):
            raise ConfigError(f"method '{self.name}' takes {self.options.__name__}, got {type(cfg).__name__}",
                              hint="build method options with tunesmith.methods.method_options(name=..., ...)")

    def prepare(self, model, cfg, lr: float) -> Prepared:
        raise NotImplementedError


class MethodTable(Mapping):
    """name -> Method, in listing order. The method modules are imported on the first look-up, not
    when the package is: the config and the CLI import this registry, and method modules import
    torch and peft (seconds), which `--help` or `config init` must not wait for."""

    def __init__(self):
        self._methods: dict[str, Method] = {}
        self._discovered = False

    def _all(self) -> dict[str, Method]:
        if not self._discovered:
            self._discovered = True  # before importing: a module that looks a method up must not recurse
            discover()
        return self._methods

    def __getitem__(self, name: str) -> Method:
        return self._all()[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def add(self, method: Method) -> None:
        self._methods[method.name] = method
        listed = sorted(self._methods.values(), key=lambda m: (m.order, m.name))
        self._methods = {m.name: m for m in listed}

    def remove(self, name: str) -> None:
        self._methods.pop(name, None)

    def load(self) -> None:
        """Import every method module (folder loaders and adapter switches register with them)."""
        self._all()

    def registered(self, name: str) -> Method | None:
        """The method registered under `name` so far, without importing the rest."""
        return self._methods.get(name)


METHODS = MethodTable()


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise TypeError(f"{cls.__qualname__}: a registered method needs a name")
    if not (isinstance(cls.options, type) and issubclass(cls.options, MethodOptions)):
        raise TypeError(f"{cls.__qualname__}.options must be a MethodOptions subclass")
    known = METHODS.registered(cls.name)
    if known is not None and type(known).__qualname__ != cls.__qualname__:   # a reload is fine, a clash is not
        raise ValueError(f"method '{cls.name}' is registered twice ({type(known).__qualname__} and {cls.__qualname__})")
    METHODS.add(cls())
    return cls


def unregister_method(name: str) -> None:
    METHODS.remove(name)


# `docs` is a script as well (`python -m tunesmith.methods.docs`); importing it beforehand makes runpy warn.
_SKIP = {"docs"}


def discover() -> None:
    """Import every module of `tunesmith.methods`; each method module registers itself on import
    (modules that define no method, such as `targets`, just import)."""
    import tunesmith.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _SKIP and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(_unknown_method(name), hint=f"available: {', '.join(METHODS)}")
    return METHODS[name]


def _unknown_method(name, listed: bool = False) -> str:
    guess = difflib.get_close_matches(str(name), list(METHODS), n=1)
    extra = f" (did you mean '{guess[0]}'?)" if guess else ""
    available = f"; available: {', '.join(METHODS)}" if listed else ""
    return f"method.name: unknown method '{name}'{extra}{available}"


# --- the `method:` section --------------------------------------------------------------------

def _owners(key: str) -> list[str]:
    return [n for n, m in METHODS.items() if key in m.options.model_fields]


def _at_default(key: str, value: Any, owners: list[str]) -> bool:
    return any(value == METHODS[o].options.model_fields[key].get_default(call_default_factory=True) for o in owners)


def _key_problem(name: str, model: type[MethodOptions], key: str, value: Any) -> str | None:
    """Why `key` cannot be in method `name`'s section, or None when it is accepted and ignored."""
    takes = f"method '{name}' takes: {', '.join(option_keys(model)) or 'no options of its own'}"
    owners = _owners(key)
    if owners:
        # A config saved before options were per method spells out every method's keys at their
        # defaults; such a line changes nothing, so it stays accepted.
        if _at_default(key, value, owners):
            return None
        return f"method.{key} is set but method '{name}' does not use it (method.{key} applies to: {', '.join(owners)}); {takes}"
    guess = difflib.get_close_matches(str(key), option_keys(model), n=1, cutoff=0.6)
    hint = f" (did you mean 'method.{guess[0]}'?)" if guess else ""
    return f"unknown key 'method.{key}' for method '{name}'{hint}; {takes}"


def _errors(problems: list[tuple[str, Any, str]]) -> ValidationError:
    return ValidationError.from_exception_data("MethodOptions", [
        {"type": PydanticCustomError("method_option", "{message}", {"message": message}), "loc": (key,), "input": value}
        for key, value, message in problems])


def parse_method_section(value: Any) -> Any:
    """The `method:` section as the chosen method's options model (pydantic errors on bad keys/values).

    Anything that is not a mapping is returned as is, for pydantic to report its type."""
    if isinstance(value, MethodOptions):
        method = METHODS.get(value.name)
        if method is not None and type(value) is method.options:
            return value
        value = {**value.model_dump(exclude_unset=True), "name": value.name}   # the name changed: re-dispatch
    if not isinstance(value, Mapping):
        return value
    name = value.get("name", MethodOptions.model_fields["name"].default)
    if not isinstance(name, str) or name not in METHODS:
        message = f"method.name: expected a string, got {name!r}" if not isinstance(name, str) else _unknown_method(name, listed=True)
        raise _errors([("name", name, message)])
    model = METHODS[name].options
    kept, ignored, problems = {"name": name}, {}, []
    for key, item in value.items():
        if key in model.model_fields:
            kept[key] = item
        elif key in SHARED_KEYS:
            ignored[key] = item
        elif (problem := _key_problem(name, model, key, item)) is not None:
            problems.append((key, item, problem))
    if problems:
        raise _errors(problems)
    AdapterShape.model_validate(ignored)   # ignored, but still a wrong type is a mistake worth naming
    return model.model_validate(kept)


def describe_error(err: dict) -> str:
    """One line for one pydantic error of a `method:` section, its location relative to the section."""
    if err["type"] == "method_option":
        return err["msg"]
    key = ".".join(str(p) for p in ("method", *err["loc"]))
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def method_options(values: Mapping | None = None, /, **keys) -> MethodOptions:
    """A method's options from plain keys, validated as a config's `method:` section would be:
    `method_options(name="vera", vera_r=64)`. A mistake raises ConfigError."""
    try:
        return parse_method_section({**(values or {}), **keys})
    except ValidationError as exc:
        raise ConfigError("; ".join(describe_error(e) for e in exc.errors())) from None


def prepare_method(model, method_cfg, lr: float) -> Prepared:
    if not isinstance(method_cfg, MethodOptions):
        method_cfg = method_options(method_cfg)
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
    from tunesmith.adapter_record import read_record

    return (read_record(folder) or {}).get("method")


def load_trained(base_model, folder: str | Path):
    """Apply a saved adapter folder (PEFT layout or one of ours) to a freshly loaded base model."""
    folder = Path(folder)
    METHODS.load()
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
    METHODS.load()
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
