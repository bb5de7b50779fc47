"""Serving benchmark: 8 concurrent clients over 4 LoRA adapters on SmolLM2-135M (the embedded default).

    nice -n 10 .venv/bin/python bench/serve.py            # writes bench/out/serve.md and serve.json

Every mode is a real server in its own process, driven over HTTP by the same closed-loop clients
(each client sends its next request when the previous answer arrives), greedy, fixed prompts and
max_tokens:

  (a) tunesmith serve, mixed-adapter batching: the 4 adapters share each forward pass (per-row LoRA)
  (b) tunesmith serve --max-batch 1: one request at a time, all four adapters resident (the row's adapter is
      picked per request; nothing is loaded or merged between requests, so this isolates batching)
  (c) llama-cpp-python's server (`python -m llama_cpp.server`) on the merged f16 GGUF of adapter 0
      (one model only: llama.cpp's server cannot switch LoRA adapters per request). f16, not a
      K-quant: quantized GGUFs crash llama.cpp 0.3.36 on AMX CPUs (see export/llama_runtime.py).

tokens/s counts completion tokens reported in `usage`, over the wall time of the whole run.

`--rev REV` adds mode (a) as a git revision of tunesmith ran it (its `src/` exported with `git archive`
and put first on the server's PYTHONPATH), so a speed-up is measured in one run on one machine:

    nice -n 10 .venv/bin/python bench/serve.py --rev c7793fa^     # the engine before issue 18's work
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from revisions import source_at

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no run-time downloads (importing peft asks the hub, as quiet.py says)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "serve"
PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short haiku about autumn leaves.",
    "What is the capital of France, and what is it famous for?",
    "Give me three tips for writing clean Python code.",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "How do I boil an egg?",
    "List four planets of the solar system.",
    "What does a compiler do?",
]


def make_adapters(n: int) -> list[Path]:
    """4 LoRA adapters (r=8, attention + MLP) on the default base, with small random A and B."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    paths = []
    for i in range(n):
        out = OUT / "adapters" / f"ad{i}"
        paths.append(out)
        if (out / "adapter_model.safetensors").is_file():
            continue
        torch.manual_seed(i)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                         init_lora_weights=False, task_type="CAUSAL_LM")
        model = get_peft_model(load_model("default"), cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.05)      # a visible but sane change of the base's answers
        model.save_pretrained(out)
        (out / "tunesmith.json").write_text(json.dumps({"base": "default", "method": "lora"}))
    return paths


def merged_gguf(adapter: Path) -> Path:
    from tunesmith.export.gguf import export_gguf

    target = OUT / "gguf"
    found = sorted(target.glob("*-f16.gguf"))
    if found:
        return found[0]
    return export_gguf(None, target, "f16", adapter=adapter, log=lambda *a: None).files["f16"]


def start(cmd: list[str], port: int, log: Path, env=None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start: see {log}")


def drive(port: int, models: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    latencies, tokens = [], []

    def client(c: int):
        with httpx.Client(timeout=600) as http:
            for k in range(per_client):
                body = {"model": models[c % len(models)], "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": PROMPTS[(c + k) % len(PROMPTS)]}]}
                t0 = time.perf_counter()
                r = http.post(url, json=body)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                tokens.append(r.json()["usage"]["completion_tokens"])

    # One warm-up request per model: first-call costs are not what we measure.
    with httpx.Client(timeout=600) as http:
        for m in models:
            http.post(url, json={"model": m, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(latencies), "tokens": sum(tokens), "wall_s": wall, "tokens_per_s": sum(tokens) / wall,
            "p50_s": statistics.median(latencies), "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per server (more than the free cores makes OpenMP spin: measured 10x slower)")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--rev", help="also run mode (a) with tunesmith as it was at this git revision")
    ap.add_argument("--dtype", help="also run mode (a) with `serve --dtype DTYPE` (e.g. bf16)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    adapters = make_adapters(4)
    names = [f"ad{i}" for i in range(4)]
    adapter_flags = [x for i, p in enumerate(adapters) for x in ("--adapter", f"ad{i}={p}")]
    modes = {
        "(a) tunesmith, mixed-adapter batching": (["--max-batch", str(args.clients)], names, env),
        "(b) tunesmith, one request at a time": (["--max-batch", "1"], names, env),
    }
    batched = modes["(a) tunesmith, mixed-adapter batching"][0]
    if args.rev:
        modes[f"(a) at {args.rev}"] = (batched, names, env | {"PYTHONPATH": str(source_at(args.rev, OUT))})
    if args.dtype:
        modes[f"(a) --dtype {args.dtype}"] = ([*batched, "--dtype", args.dtype], names, env)
    results: dict[str, dict] = {}
    port = 18300
    for label, (flags, models, mode_env) in modes.items():
        port += 1
        cmd = [sys.executable, "-m", "tunesmith", "serve", "--port", str(port), *adapter_flags, *flags,
               "--max-queue", "1024"]
        proc = start(cmd, port, OUT / f"server-{port}.log", mode_env)
        try:
            results[label] = drive(port, models, args.clients, args.per_client, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(30)
        print(label, results[label], flush=True)
    if not args.skip_llama:
        gguf = merged_gguf(adapters[0])
        port += 1
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--n_threads", str(args.threads), "--n_ctx", "2048", "--model_alias", "ad0"]
        proc = start(cmd, port, OUT / f"server-{port}.log", env)
        try:
            label = "(c) llama-cpp-python server, merged f16 GGUF (ad0 only)"
            results[label] = drive(port, ["ad0"], args.clients, args.per_client, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(30)
        print(label, results[label], flush=True)

    ref = results["(b) tunesmith, one request at a time"]["tokens_per_s"]
    lines = [f"{args.clients} clients, {args.per_client} requests each, max_tokens {args.max_tokens}, greedy, "
             f"{args.threads} CPU threads per server, SmolLM2-135M-Instruct fp32 (torch) / f16 (llama.cpp)", "",
             "| mode | requests | tokens | tokens/s | vs (b) | p50 latency (s) | p95 latency (s) |",
             "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['requests']} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
                     f"{r['tokens_per_s'] / ref:.2f}x | {r['p50_s']:.2f} | {r['p95_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (REPO / "bench" / "out" / "serve.md").write_text(table + "\n")
    (REPO / "bench" / "out" / "serve.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
