"""Where each method's `train.lr: auto` rate comes from: a short run per (method, rate) on a 2-layer
cut of the default model, printing the mean loss of the last 5 of 40 steps.

    python scripts/probe_method_lr.py lora=2e-4,1e-3,3e-3 vera=1e-2,5e-2,2e-1 [--steps 40]

The cut (the first two decoder layers of SmolLM2-135M-Instruct, saved once under --work) starts at a
loss near 20, so every method has far to go in a few steps; the rate each method's `default_lr`
uses is the one that brings it about as far as LoRA at its default rate, not further: a rate at the
edge of stability on the cut would be too high on the whole model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "assets" / "quickstart" / "train.jsonl"


def cut_model(work: Path) -> Path:
    from tunesmith.models import load_model, load_tokenizer, resolve_base

    cut = work / "cut2"
    if not (cut / "config.json").exists():
        base = resolve_base("default")
        model = load_model(base, dtype="fp32")
        model.model.layers = model.model.layers[:2]
        model.config.num_hidden_layers = 2
        model.save_pretrained(cut)
        load_tokenizer(base, "auto").save_pretrained(cut)
    return cut


def probe(cut: Path, work: Path, method: str, lr: float, steps: int) -> tuple[float, float]:
    from tunesmith.config import RunConfig
    from tunesmith.events import Events
    from tunesmith.pipeline import run

    out = work / "runs" / f"{method}_{lr:g}"
    cfg = RunConfig.model_validate({
        "model": {"base": str(cut)}, "data": {"train": str(DATA), "max_len": 256, "val_split": 0},
        "method": {"name": method},
        "train": {"max_steps": steps, "lr": lr, "batch_size": 8, "precision": "fp32", "seed": 0},
        "eval": {"enabled": False}, "output": {"dir": str(out), "overwrite": True}})
    run(cfg, events=Events())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return losses[0], statistics.mean(losses[-5:])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="METHOD=LR,LR,...")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("runs/lr_probe"))
    args = parser.parse_args(argv)
    cut = cut_model(args.work)
    print("| method | lr | first loss | mean of last 5 |\n|---|---|---|---|", flush=True)
    for spec in args.specs:
        method, rates = spec.split("=")
        for lr in map(float, rates.split(",")):
            first, last = probe(cut, args.work, method, lr, args.steps)
            print(f"| {method} | {lr:g} | {first:.2f} | {last:.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
