"""The LoRA family through peft: lora, qlora, rslora, dora, and the LoRA+ / LoRA-FA optimizers.

rsLoRA and DoRA are flags of one LoRA config, so they combine with each other and with a 4-bit
base (qlora + dora). LoRA+ and LoRA-FA replace AdamW through the trainer's "optimizer" hook.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from tunesmith.errors import ConfigError
from tunesmith.methods.hooks import TrainingHooks
from tunesmith.methods.options import AdapterShape
from tunesmith.methods.registry import Method, Prepared, register_method, trainable_groups


class LoRAOptions(AdapterShape):
    rslora: bool = Field(False, description="lora/qlora/dora: scale by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)")
    dora: bool = Field(False, description="lora/qlora/rslora: add DoRA magnitude vectors (weight-decomposed LoRA)")
    loraplus_lr_ratio: float = Field(0.0, ge=0.0, description="LoRA+: B learns this many times faster than A (0 = off; the paper uses 16)")
    lora_fa: bool = Field(False, description="LoRA-FA: freeze A and train B with the projected-gradient optimizer")


class QLoRAOptions(LoRAOptions):
    quant_double: bool = Field(True, description="qlora: double quantization of the 4-bit constants")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora: 4-bit data type")


def lora_config(cfg, *, rslora: bool | None = None, dora: bool | None = None, **extra):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.rslora if rslora is None else rslora,
        use_dora=cfg.dora if dora is None else dora,
        task_type="CAUSAL_LM",
        **extra,
    )


def wrap_peft(model, peft_config):
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def check_optimizer_options(method_name: str, cfg, uses_dora: bool) -> None:
    if cfg.loraplus_lr_ratio and cfg.lora_fa:
        raise ConfigError("method.loraplus_lr_ratio and method.lora_fa both set: each replaces the optimizer, pick one",
                          hint="LoRA+ trains A and B at different rates; LoRA-FA freezes A")
    if cfg.lora_fa and uses_dora:
        raise ConfigError(f"method.lora_fa with DoRA ({method_name}): LoRA-FA's projected gradient assumes the plain "
                          "product B·A, which DoRA renormalises per column",
                          hint="drop method.lora_fa, or use method.name=lora without dora")


def lorafa_rslora(rslora: bool) -> dict:
    """Older peft takes `use_rslora` with default False, so rsLoRA's scale must be passed; newer peft
    (0.21) reads it from the adapter's own config and deprecates the argument (default None)."""
    import inspect

    from peft.optimizers import create_lorafa_optimizer

    param = inspect.signature(create_lorafa_optimizer).parameters.get("use_rslora")
    return {} if param is None or param.default is None else {"use_rslora": rslora}


def optimizer_hooks(model, cfg, lr: float, rslora: bool = False) -> TrainingHooks:
    """LoRA+ or LoRA-FA as the trainer's optimizer factory (the param groups it passes are ignored:
    both optimizers build their own groups from the peft model). `rslora` is the scaling the
    adapter really uses: LoRA-FA's projected gradient divides by that scale squared."""
    if cfg.loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        return TrainingHooks(optimizer=lambda _groups, weight_decay=0.0: create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=cfg.loraplus_lr_ratio,
            loraplus_weight_decay=weight_decay))  # peft reads its own key; plain weight_decay is ignored
    if cfg.lora_fa:
        from peft.optimizers import create_lorafa_optimizer

        return TrainingHooks(optimizer=lambda _groups, weight_decay=0.0: create_lorafa_optimizer(
            model, r=cfg.r, lora_alpha=cfg.alpha, lr=lr, weight_decay=weight_decay, **lorafa_rslora(rslora)))
    return TrainingHooks()


def freeze_lora_a(model) -> None:
    # LoRA-FA keeps A at its random init; freezing it here (not only inside the optimizer factory)
    # keeps the reported trainable-parameter count and the checkpoints honest.
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.requires_grad_(False)


@register_method
class LoRA(Method):
    name = "lora"
    summary = "low-rank adapters B·A on linear layers (peft); +rslora/dora flags, LoRA+/LoRA-FA optimizers"
    options = LoRAOptions
    order = 10
    force_rslora: bool | None = None
    force_dora: bool | None = None

    def uses_dora(self, cfg) -> bool:
        return bool(cfg.dora if self.force_dora is None else self.force_dora)

    def uses_rslora(self, cfg) -> bool:
        return bool(cfg.rslora if self.force_rslora is None else self.force_rslora)

    def check(self, cfg) -> None:
        super().check(cfg)
        check_optimizer_options(self.name, cfg, self.uses_dora(cfg))

    def prepare(self, model, cfg, lr):
        self.check(cfg)
        model = wrap_peft(model, lora_config(cfg, rslora=self.uses_rslora(cfg), dora=self.uses_dora(cfg)))
        if cfg.lora_fa:
            freeze_lora_a(model)
        return Prepared(model, trainable_groups(model, lr), kind=self.kind,
                        hooks=optimizer_hooks(model, cfg, lr, rslora=self.uses_rslora(cfg)))


@register_method
class RSLoRA(LoRA):
    name = "rslora"
    summary = "rank-stabilised LoRA: scale alpha/sqrt(r), so higher ranks keep learning (peft)"
    order = 11
    force_rslora = True


@register_method
class DoRA(LoRA):
    name = "dora"
    summary = "weight-decomposed LoRA: LoRA direction plus a trained magnitude per output (peft)"
    order = 12
    force_dora = True


@register_method
class QLoRA(LoRA):
    name = "qlora"
    summary = "LoRA over a 4-bit NF4 base (bitsandbytes, double quantization, bf16 compute); dora/rslora flags combine"
    options = QLoRAOptions
    order = 13
    base_bits = 4

    def load_options(self, cfg):
        return {"quantization": {"bits": 4, "quant_type": cfg.quant_type, "double": cfg.quant_double, "compute_dtype": "bf16"}}

    def prepare(self, model, cfg, lr):
        from peft import prepare_model_for_kbit_training

        if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_loaded_in_4bit", False):
            # Gradient checkpointing is the trainer's choice, not a side effect of quantization.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().prepare(model, cfg, lr)
