"""LoRA and QLoRA through peft."""

from __future__ import annotations

from tunesmith.methods.registry import Method, Prepared, register_method, trainable_groups


def lora_config(cfg, **extra):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
        **extra,
    )


def wrap_peft(model, peft_config):
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


@register_method
class LoRA(Method):
    name = "lora"
    summary = "low-rank adapters on linear layers (peft)"

    def prepare(self, model, cfg, lr):
        model = wrap_peft(model, lora_config(cfg))
        return Prepared(model, trainable_groups(model, lr), kind="adapter")


@register_method
class QLoRA(LoRA):
    name = "qlora"
    summary = "LoRA over a 4-bit NF4 base (bitsandbytes, double quantization, bf16 compute)"

    def load_options(self, cfg):
        return {"quantization": {"bits": 4, "quant_type": cfg.quant_type, "double": cfg.quant_double, "compute_dtype": "bf16"}}

    def prepare(self, model, cfg, lr):
        from peft import prepare_model_for_kbit_training

        # Gradient checkpointing is the trainer's choice, not a side effect of quantization.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().prepare(model, cfg, lr)
