"""Preference-training throughput: tunesmith DPO vs TRL's DPOTrainer on the same work, in one run.

    .venv/bin/python bench/preference.py [--steps 8] [--pairs 256]

Work: SmolLM2-135M-Instruct (the embedded default), LoRA r=16 alpha=32 on all linear layers, sigmoid
DPO with beta 0.1, the reference = the same weights with the adapter off (both systems), 8 pairs per
optimizer step, the same steps and learning rate (constant) for both. Pairs: a question about a
Python standard-library object; chosen = its docstring, rejected = another object's docstring, each
trimmed to a length drawn from 30-300 tokens (so chosen and rejected lengths differ, as in real
preference data; nothing is downloaded). Both run in the precision a user gets: bf16 autocast on CPUs
with native bf16, fp32 elsewhere (TRL: bf16=True there, else fp32).

Each system runs in its own subprocess (peak RSS is its own). Reported:
  effective tokens/s   non-padding tokens (prompt + answer, both answers of every pair) per second of
                       training-loop wall time, counted by each system itself
  peak RSS             the subprocess's maximum resident set size
  held-out accuracy /  implicit-reward preference accuracy and mean sigmoid DPO loss on 32 held-out pairs,
  held-out DPO loss    computed afterwards by the same code (tunesmith.eval.preference) for both adapters
  loss curve           each system's per-step training loss (the data orders differ, so compare trends)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no run-time downloads (importing peft asks the hub, as quiet.py says)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_throughput import docstring_pool, n_tokens  # noqa: E402

OUT = HERE / "out"
LR, RANK, ALPHA, BATCH, BETA = 2e-4, 16, 32, 8, 0.1


def trim(tokenizer, text: str, target: int) -> str:
    words = text.split()
    while len(words) > 8 and len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) > target:
        words = words[: max(8, int(len(words) * 0.85))]
    return " ".join(words)


def build_pairs(tokenizer, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pool = docstring_pool()
    rng.shuffle(pool)
    rows = []
    for i in range(n):
        name, doc = pool[i % len(pool)]
        _, other = pool[(i * 7 + 3) % len(pool)]
        rows.append({"prompt": [{"role": "user", "content": f"Explain what {name} does."}],
                     "chosen": [{"role": "assistant", "content": trim(tokenizer, doc, rng.randint(30, 300))}],
                     "rejected": [{"role": "assistant", "content": trim(tokenizer, other, rng.randint(30, 300))}]})
    return rows


def _samples(rows):
    from tunesmith.data.schema import Sample

    return [Sample(messages=r["prompt"], chosen=r["chosen"][0]["content"], rejected=r["rejected"][0]["content"])
            for r in rows]


def run_tunesmith(rows, model_dir, steps, out_dir):
    from tunesmith.config import DataConfig, TrainConfig
    from tunesmith.methods import method_options, prepare_method
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.objective_options import DPOOptions
    from tunesmith.train.objectives import DPO
    from tunesmith.train.trainer import Trainer

    tok = load_tokenizer(str(model_dir))
    data_cfg = DataConfig(max_len=1024)
    pairs, _ = DPO.tokenize(tok, _samples(rows), data_cfg)
    torch.manual_seed(0)
    prepared = prepare_method(load_model(str(model_dir)), method_options(name="lora", r=RANK, alpha=ALPHA), LR)
    cfg = TrainConfig(max_steps=steps, batch_size=BATCH, lr=LR, warmup_ratio=0.0, scheduler="constant",
                      precision="auto", seed=0)
    objective = DPO.for_run(prepared, tok, data_cfg, DPOOptions(beta=BETA))
    trainer = Trainer(cfg, data_cfg, prepared, tok, pairs, [], out_dir, objective=objective)
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    losses = [json.loads(line)["loss"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {"wall": wall, "tokens": result.tokens, "losses": losses, "adapter": str(result.output_dir),
            "precision": trainer.precision}


def run_trl(rows, model_dir, steps, out_dir):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tunesmith.train.trainer import resolve_precision

    bf16 = resolve_precision("auto") == "bf16"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = DPOConfig(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
                     lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
                     use_cpu=True, seed=0, max_length=1024, beta=BETA, bf16=bf16, dataloader_num_workers=0)
    timing = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["t0"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            timing["t1"] = time.perf_counter()

    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"), callbacks=[Clock()])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    n = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    adapter = Path(out_dir) / "adapter"
    trainer.model.save_pretrained(adapter)
    return {"wall": timing["t1"] - timing["t0"], "tokens": float(n), "losses": [h["loss"] for h in logs],
            "adapter": str(adapter), "precision": "bf16" if bf16 else "fp32"}


def heldout(model_dir, adapter, rows) -> dict:
    from peft import PeftModel

    from tunesmith.eval.preference import pair_items, pair_scores, sequence_logps, summarize
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.models.adapters import adapters_off

    tok = load_tokenizer(str(model_dir))
    model = PeftModel.from_pretrained(load_model(str(model_dir)), adapter).eval()
    items = pair_items(tok, _samples(rows))
    policy = sequence_logps(model, items)
    with adapters_off(model):
        reference = sequence_logps(model, items)
    scores = pair_scores(policy, reference)
    loss = sum(math.log1p(math.exp(-BETA * s.margin)) for s in scores) / len(scores)
    return {"accuracy": summarize(scores)["accuracy"], "dpo_loss": loss}


def child(args) -> None:
    payload = json.loads(Path(args.child).read_text())
    out_dir = OUT / f"pref-{args.system}"
    shutil.rmtree(out_dir, ignore_errors=True)   # a previous run's metrics.jsonl would be appended to
    out_dir.mkdir(parents=True)
    run = run_tunesmith if args.system == "tunesmith" else run_trl
    res = run(payload["rows"], payload["model_dir"], args.steps, out_dir)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res.update(heldout(payload["model_dir"], res["adapter"], payload["heldout"]))
    Path(args.result).write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--systems", default="trl,tunesmith")
    ap.add_argument("--child")
    ap.add_argument("--system")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        return child(args)

    from tunesmith.models import load_tokenizer
    from tunesmith.models.default import ensure_default_model

    model_dir = ensure_default_model()
    tok = load_tokenizer(str(model_dir))
    rows = build_pairs(tok, args.pairs + 32)
    train, held = rows[:args.pairs], rows[args.pairs:]
    lengths = [n_tokens(tok, r["prompt"] + r["chosen"]) + n_tokens(tok, r["prompt"] + r["rejected"]) for r in train]
    OUT.mkdir(parents=True, exist_ok=True)
    payload = OUT / "pref-payload.json"
    payload.write_text(json.dumps({"rows": train, "heldout": held, "model_dir": str(model_dir)}))
    from tunesmith.train.trainer import resolve_precision

    cpu = "AVX-512 bf16" if any("avx512_bf16" in line for line in open("/proc/cpuinfo")) else "no native bf16"
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        cpu += f" (kernels limited to {os.environ['ATEN_CPU_CAPABILITY']}, precision auto = {resolve_precision('auto')})"
    print(f"data: {len(train)} pairs, {min(lengths)}-{max(lengths)} tokens per pair (both answers with their prompt, "
          f"mean {sum(lengths) / len(lengths):.0f}); {BATCH} pairs/step; {args.steps} steps; CPU: {cpu}, "
          f"{os.cpu_count()} cores", flush=True)
    results = {}
    for system in args.systems.split(","):
        res_path = OUT / f"pref-result-{system}.json"
        cmd = [sys.executable, __file__, "--child", str(payload), "--system", system, "--result", str(res_path),
               "--steps", str(args.steps)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if r.returncode != 0:
            print(f"{system}: FAILED\n{r.stderr[-3000:]}", flush=True)
            continue
        res = results[system] = json.loads(res_path.read_text())
        print(f"{system}: {res['tokens'] / res['wall']:.0f} tok/s, {res['peak_rss_mb']:.0f} MB, {res['precision']}, "
              f"losses {' '.join(f'{x:.3f}' for x in res['losses'])} ({time.perf_counter() - t0:.0f}s)", flush=True)
    lines = ["| system | effective tok/s | vs TRL | peak RSS (MB) | first / last train loss | held-out accuracy | held-out DPO loss |",
             "|---|---|---|---|---|---|---|"]
    trl_tps = results["trl"]["tokens"] / results["trl"]["wall"] if "trl" in results else float("nan")
    for system, res in results.items():
        tps = res["tokens"] / res["wall"]
        lines.append(f"| {system} ({res['precision']}) | {tps:.0f} | {tps / trl_tps:.2f}x | {res['peak_rss_mb']:.0f} | "
                     f"{res['losses'][0]:.4f} / {res['losses'][-1]:.4f} | {res['accuracy']:.3f} | {res['dpo_loss']:.4f} |")
    table = "\n".join(lines)
    print(table)
    (OUT / "preference.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
