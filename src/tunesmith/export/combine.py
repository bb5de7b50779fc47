"""Weighted combination of LoRA adapters (peft's add_weighted_adapter) into one adapter folder.

All inputs must share the base model and target modules: peft would otherwise combine whatever
overlaps and silently drop the rest. The result is an ordinary PEFT adapter folder (plus our
tunesmith.json recording the base and the recipe), so every other command takes it as-is.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.io_utils import atomic_dir, check_not_inside, check_replaceable

# Only a previous adapter folder is replaced by a new combination.
ADAPTER_MARKERS = ("adapter_config.json",)

# name -> needs a density in (0, 1]. ("linear" mixes the A and B factors separately, so for more
# than one non-zero weight it is an approximation; "cat" and "svd" are exact up to the SVD rank.)
COMBINATIONS = {"linear": False, "cat": False, "svd": False, "ties": True, "dare_linear": True, "dare_ties": True,
                "magnitude_prune": True}


def read_adapter_config(folder: Path) -> dict:
    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        raise UserError(f"{folder}: not an adapter folder (no adapter_config.json)",
                        hint="pass the 'adapter' folders of runs")
    return json.loads(path.read_text())


def check_inputs(adapters: list[Path], weights: list[float], method: str, density: float | None) -> list[dict]:
    if len(adapters) < 2:
        raise UserError("combine needs at least two adapters", hint="tunesmith combine A1 A2 --weights 0.5,0.5 -o OUT")
    if len(weights) != len(adapters):
        raise UserError(f"--weights: {len(weights)} weight(s) for {len(adapters)} adapters",
                        hint="give one weight per adapter, e.g. --weights " + ",".join(["0.5"] * len(adapters)))
    if method not in COMBINATIONS:
        raise UserError(f"--method: unknown combination '{method}'", hint=f"use one of {', '.join(COMBINATIONS)}")
    if COMBINATIONS[method]:
        if density is None or not 0 < density <= 1:
            raise UserError(f"--density: method '{method}' prunes each adapter and needs a density in (0, 1]",
                            hint="e.g. --density 0.5 keeps half of each adapter's entries")
    elif density is not None:
        raise UserError(f"--density is not used by method '{method}'",
                        hint="density applies to: " + ", ".join(m for m, d in COMBINATIONS.items() if d))
    configs = [read_adapter_config(a) for a in adapters]
    for folder, cfg in zip(adapters, configs):
        if cfg.get("peft_type") != "LORA":
            raise UserError(f"{folder}: a {cfg.get('peft_type')} adapter; only LoRA adapters can be combined")
        if cfg.get("use_dora"):
            raise UserError(f"{folder}: DoRA adapters cannot be combined (their magnitude vectors do not add)",
                            hint="merge each into the base instead, or retrain with method.name=lora")
    first_targets = sorted(_targets(configs[0]))
    for folder, cfg in zip(adapters[1:], configs[1:]):
        if sorted(_targets(cfg)) != first_targets:
            raise UserError(f"{folder}: targets {sorted(_targets(cfg))} but {adapters[0]} targets {first_targets}",
                            hint="only adapters trained on the same target_modules can be combined")
    if method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):
        ranks = {cfg.get("r") for cfg in configs}
        if len(ranks) > 1:
            raise UserError(f"--method {method}: adapters have different ranks {sorted(ranks)}",
                            hint="use --method cat or svd, which handle different ranks")
    return configs


def _targets(cfg: dict) -> set[str]:
    t = cfg.get("target_modules") or []
    return {t} if isinstance(t, str) else set(t)


def check_same_base(adapters: list[Path]) -> str:
    from tunesmith.export.merge import adapter_base
    from tunesmith.models import resolve_base

    bases = [adapter_base(a) for a in adapters]
    if any(b is None for b in bases):
        missing = adapters[bases.index(None)]
        raise UserError(f"{missing}: the adapter does not name its base model",
                        hint="add tunesmith.json {\"base\": ...} next to it, or retrain with tunesmith")
    resolved = [resolve_base(b).path.resolve() for b in bases]
    for folder, base, path in zip(adapters[1:], bases[1:], resolved[1:]):
        if path != resolved[0]:
            raise UserError(f"{folder}: trained on base '{base}' ({path}) but {adapters[0]} on '{bases[0]}' ({resolved[0]})",
                            hint="adapters can only be combined when they were trained on the same base model")
    return bases[0]


def combine_adapters(adapters: list[str | Path], weights: list[float], out_dir: str | Path, method: str = "linear",
                     density: float | None = None) -> Path:
    from peft import PeftModel

    from tunesmith.models import load_model, load_tokenizer, resolve_base

    adapters = [Path(a) for a in adapters]
    check_inputs(adapters, weights, method, density)
    check_not_inside(out_dir, adapters)
    check_replaceable(out_dir, ADAPTER_MARKERS)
    base = check_same_base(adapters)
    resolved = resolve_base(base)
    model = load_model(resolved, dtype="fp32")
    names = [f"input{i}" for i in range(len(adapters))]
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=names[0])
        for name, folder in zip(names[1:], adapters[1:]):
            peft_model.load_adapter(str(folder), adapter_name=name)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"an adapter does not fit base '{base}': {str(exc).splitlines()[0]}") from exc
    # add_weighted_adapter copies the first config (use_rslora included) but sets alpha = r, meaning
    # scale 1; with rsLoRA kept on, the new adapter would be scaled by sqrt(r) instead.
    peft_model.peft_config[names[0]].use_rslora = False
    kwargs = {"density": density} if density is not None else {}
    peft_model.add_weighted_adapter(names, [float(w) for w in weights], adapter_name="default",
                                    combination_type=method, **kwargs)
    for name in names:
        peft_model.delete_adapter(name)
    peft_model.set_adapter("default")
    with atomic_dir(out_dir, ADAPTER_MARKERS) as tmp:
        peft_model.save_pretrained(tmp, selected_adapters=["default"])
        load_tokenizer(resolved).save_pretrained(tmp)
        (tmp / "tunesmith.json").write_text(json.dumps({
            "base": base, "method": "lora",
            "combined": {"adapters": [str(a) for a in adapters], "weights": list(weights), "method": method,
                         "density": density}}, indent=2))
    return Path(out_dir)
