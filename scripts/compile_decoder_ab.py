"""Eager against `torch.compile`d decoder layers: forward and backward of one packed 1,024-token row of the
default model with LoRA r=16 on all linear layers, fp32, interleaved in one process.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python scripts/compile_decoder_ab.py [--rounds 4]

Figures: docs/training.md, "Where an fp32 step goes".
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.models.default import ensure_default_model


def build(path, compiled: bool):
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    if compiled:
        for layer in model.base_model.model.model.layers:
            layer.compile(dynamic=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.manual_seed(0)
    path = ensure_default_model()
    ids = torch.randint(0, 49000, (1, args.tokens))                      # (1, T)
    positions = torch.arange(args.tokens)[None]                          # (1, T)

    def step(model) -> None:
        hidden = model.base_model.model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        hidden.float().pow(2).mean().backward()

    models = {"eager": build(path, False), "compiled": build(path, True)}
    start = time.perf_counter()
    step(models["compiled"])
    print(f"compile + first step: {time.perf_counter() - start:.1f} s")
    step(models["eager"])
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            step(model)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:9s} best {min(values):.2f} s  all {' '.join(f'{v:.2f}' for v in values)}")
    print(f"compiled / eager (best): {min(times['compiled']) / min(times['eager']):.3f}")


if __name__ == "__main__":
    main()
