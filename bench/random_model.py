"""A randomly initialised HF model folder with a real tokenizer, for speed benchmarks where weights cannot go.

    python bench/random_model.py --like DIR --out DIR [--preset smollm2-1.7b]

`--like` is a model folder (config.json, tokenizer files; weights not needed); the new folder gets its
tokenizer and chat template, its config (or a preset's shape over it) and random weights in bf16 from
seed 0. The device machine cannot reach the embedded default model (its GGUF is larger than what may
travel there), and a training step costs the same whatever the weights' values, so GPU throughput is
measured on such a copy. Losses trained from it are comparable between systems, not with real runs.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

# Published shapes of larger models of the default model's family (same tokenizer and vocabulary).
PRESETS = {
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, rope_theta=130000.0, tie_word_embeddings=True),
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--like", required=True, help="model folder whose config and tokenizer to copy")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="another shape of the same family")
    args = ap.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM

    like, out = Path(args.like), Path(args.out)
    config = AutoConfig.from_pretrained(like)
    for key, value in PRESETS.get(args.preset, {}).items():
        setattr(config, key, value)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (like / name).is_file():
            shutil.copy(like / name, out / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.0f}M parameters, random (seed 0), {args.preset or like.name} shape")


if __name__ == "__main__":
    main()
