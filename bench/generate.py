"""Generation benchmark on SmolLM2-135M (the embedded default): tunesmith's engine against transformers'
`generate` (what offline evaluation ran before the engine did), and prompt lookup, on the quickstart task.

    nice -n 10 .venv/bin/python bench/generate.py          # prints the tables; writes bench/out/generate.json

Prompts: the quickstart's held-out orders, each with three training examples before it (the few-shot
baseline every evaluation scores), greedy, `--new` tokens at most. Modes, all in this one process:

  hf-bN      left-padded batches of N through `model.generate` (offline generation before the engine)
  engine-bN  the engine at max_batch N (rows join as others finish)
  +lookup    the engine at batch 1 with prompt lookup (`eval.prompt_lookup` / `serve --prompt-lookup`),
             drafting at most `--lookup` tokens per step
  served-b1  one engine kept across the prompts with its prompt cache, as `tunesmith serve` answers
             requests one at a time: the few-shot demonstrations every prompt starts with are
             prefilled once (llama.cpp reuses its previous prompt the same way)

On a shared machine timings swing from minute to minute, so the modes are interleaved: at batch 1
each prompt runs in every mode before the next prompt; at batch 16 the modes alternate over
`--rounds` rounds and each keeps its fastest. Every mode must give the same tokens (checked).

`--eval [--precision bf16]` times what a quickstart evaluation generates: the 60 held-out orders answered by the three
systems it scores (the tuned adapter, base zero-shot, base 3-shot), "before" as offline generation
ran before the engine (`model.generate`, left-padded batches of 16, each prompt whole) and "now" with
`tunesmith eval`'s defaults (the engine at eval.batch_size rows, the shared few-shot prefix
prefilled once). `--adapter DIR` is the tuned adapter (the quickstart's `runs/quickstart/adapter`
after `make demo`); without it an untrained LoRA (r 16, every linear layer) stands in, which costs
the same per token and answers as the base does. Both must give the same tokens (checked).

`--llama` times batch-1 decoding of the default model against llama.cpp (llama-cpp-python) on its f16
GGUF (exported by `tunesmith export gguf`), in fp32 and, on CPUs with native bf16, in bf16 (what `serve` and
`eval` run there by default), the same zero-shot prompts one at a time, interleaved,
greedy, each tool to its own end-of-reply; tokens/s include each request's prefill. llama.cpp keeps
the previous prompt's keys and values and prefills only where the next prompt differs; `served-b1`
does the same through the engine's prompt cache, `engine-b1` (a fresh engine per prompt) does not.

`--breakdown` adds where one decode step's time goes (model forward, KV-cache writes, sampling, the
rest of the engine's Python) at batch 1 and 16, with transformers' concatenating cache ("before")
and the engine's preallocated slabs ("after"), on one torch thread and on one per core, interleaved
the same way (the process's own thread setting is restored afterwards).

`--step` times one-token decode steps with transformers' forward against `generation/decode_step.py`'s
(the same logits, checked), in fp32 and, where the CPU has native bf16, bf16 autocast with packed weights,
at batch 1 and 16 after a ~100-token prompt: the two interleaved over 4 rounds, each keeping its best.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no run-time downloads (importing peft asks the hub, as quiet.py says)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
TASK = REPO / "src" / "tunesmith" / "assets" / "quickstart"


def cpu_kind() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith("AVX2") or os.environ.get("ATEN_CPU_CAPABILITY") == "avx2":
        return "AVX2 only (simulated on an AVX-512 bf16 CPU)"
    return "AVX-512 bf16" if "avx512_bf16" in flags else "AVX2 only"


def conversations(n: int, shots: int = 3) -> list[list[dict]]:
    """Few-shot quickstart prompts: `shots` training pairs as earlier turns, then a held-out order."""
    def read(name):
        return [json.loads(line)["messages"] for line in (TASK / name).read_text().splitlines() if line.strip()]

    examples = [m for pair in read("train.jsonl")[:shots] for m in pair]
    return [examples + test[:1] for test in read("test.jsonl")[:n]]


@torch.no_grad()
def hf_generate(model, tokenizer, convs, batch: int, new: int) -> list[list[int]]:
    """Offline generation as it was before the engine: longest first, left-padded batches, `model.generate`."""
    from tunesmith.data.tokenize import prompt_ids
    from tunesmith.generation import left_pad, pad_id, stop_token_ids
    from tunesmith.generation.sampling import generate_kwargs
    from tunesmith.generation.stops import cut_at_stop

    encoded = [prompt_ids(tokenizer, c) for c in convs]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    stops, pad, out = stop_token_ids(tokenizer), pad_id(tokenizer), [None] * len(encoded)
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        ids, mask = left_pad([encoded[i] for i in chunk], pad)
        gen = model.generate(input_ids=ids, attention_mask=mask, **generate_kwargs(new, pad, stops, 0.0))
        for r, i in enumerate(chunk):
            out[i] = cut_at_stop(gen[r, ids.shape[1]:].tolist(), stops)
    return out


def engine_generate(model, tokenizer, convs, batch: int, new: int, lookup: int = 0) -> list[list[int]]:
    from tunesmith.generation import generate_tokens

    return generate_tokens(model, tokenizer, convs, max_new_tokens=new, batch_size=batch, prompt_lookup=lookup)


class ServingEngine:
    """One engine kept across requests, with a prompt cache, as `tunesmith serve` runs it: the model's weights are
    held (cast, packed) once for the engine's life, not per request, and a prompt that starts as an earlier one
    did prefills only the rest (llama.cpp keeps its last prompt the same way). Its requests run on the calling
    thread (a started engine thread's idle OpenMP workers would spin on the cores the other modes are timed on),
    with a copy of the model of its own (held weights must not reach the modes timed in between)."""

    def __init__(self, model, tokenizer, lookup: int = 0, precision: str = "fp32"):
        from tunesmith.generation import Engine, PromptLookup, stop_token_ids
        from tunesmith.generation.prompt_cache import PromptCache
        from tunesmith.train.precision import weights_held

        self.tokenizer = tokenizer
        model = copy.deepcopy(model)
        self.held = contextlib.ExitStack()
        self.held.enter_context(weights_held(model, precision))
        self.engine = Engine(model, tokenizer, None, stop_token_ids(tokenizer), max_batch=1, precision=precision,
                             lookup=PromptLookup(max_draft=lookup) if lookup else None, prompt_cache=PromptCache(256 << 20))

    def __call__(self, convs, new: int) -> list[list[int]]:
        from tunesmith.data.tokenize import prompt_ids
        from tunesmith.generation import GenRequest

        rows = [GenRequest(prompt_ids=prompt_ids(self.tokenizer, c), sink=None, max_tokens=new, temperature=0.0,
                           text=False, timeout_s=float("inf")) for c in convs]
        self.engine.run(rows)
        return [r.generated for r in rows]


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


def batch1(model, tokenizer, convs, new: int, lookup: int) -> dict:
    served, served_lookup = ServingEngine(model, tokenizer), ServingEngine(model, tokenizer, lookup)
    modes = {"hf-b1": lambda c: hf_generate(model, tokenizer, c, 1, new),
             "engine-b1": lambda c: engine_generate(model, tokenizer, c, 1, new),
             "engine-b1+lookup": lambda c: engine_generate(model, tokenizer, c, 1, new, lookup=lookup),
             "served-b1": lambda c: served(c, new),
             "served-b1+lookup": lambda c: served_lookup(c, new)}
    seconds, replies = collections.defaultdict(list), collections.defaultdict(list)
    for conv in convs:
        for name, fn in modes.items():
            out, dt = timed(fn, [conv])
            seconds[name].append(dt)
            replies[name] += out
    return {name: summary(replies[name], seconds[name]) for name in modes}, replies


def batch16(model, tokenizer, convs, new: int, rounds: int) -> dict:
    modes = {"hf-b16": lambda: hf_generate(model, tokenizer, convs, 16, new),
             "engine-b16": lambda: engine_generate(model, tokenizer, convs, 16, new)}
    best, replies = {}, {}
    for _ in range(rounds):
        for name, fn in modes.items():
            out, dt = timed(fn)
            replies[name] = out
            best[name] = min(best.get(name, dt), dt)
    return {name: summary(replies[name], [best[name]]) for name in modes}, replies


def quickstart_eval(model, tokenizer, adapter: str | None, new: int, precision: str = "fp32",
                    rounds: int = 1) -> tuple[dict, float]:
    """Seconds per system, before (HF generate, batches of 16, whole prompts) and now (eval's defaults),
    the best of `rounds`; and the share of replies that are the same token for token (all of them in
    fp32; under bf16 autocast rounding depends on the batch's shapes)."""
    from tunesmith.config import EvalConfig
    from tunesmith.generation import generate_tokens

    if adapter:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(model, adapter).eval()
    else:
        from peft import LoraConfig, get_peft_model

        tuned = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).eval()
    few = conversations(60)
    zero = [c[-1:] for c in few]
    systems = {"tuned": (zero, contextlib.nullcontext), "zero-shot": (zero, tuned.disable_adapter),
               "few-shot": (few, tuned.disable_adapter)}
    batch = EvalConfig().batch_size
    # What `tunesmith eval` runs with train.precision auto: bf16 autocast where the CPU has native bf16.
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    rows, same, total = {}, 0, 0
    for name, (convs, active) in systems.items():
        with active():
            t_before = t_now = float("inf")
            for _ in range(rounds):
                with autocast():
                    before, dt = timed(hf_generate, tuned, tokenizer, convs, 16, new)
                t_before = min(t_before, dt)
                now, dt = timed(generate_tokens, tuned, tokenizer, convs, max_new_tokens=new, batch_size=batch,
                                precision=precision)
                t_now = min(t_now, dt)
        same += sum(a == b for a, b in zip(before, now))
        total += len(now)
        rows[name] = {"tokens": sum(map(len, now)), "before_s": round(t_before, 2), "now_s": round(t_now, 2)}
    return rows, same / total


def llama_compare(model, tokenizer, convs, new: int) -> tuple[dict, float]:
    """Batch-1 tokens/s of the engine (fp32) and of llama.cpp on the f16 GGUF; and the share of prompts
    whose greedy replies agree token for token (f16 weights round differently from fp32 ones)."""
    from llama_cpp import Llama

    from tunesmith.data.tokenize import prompt_ids
    from tunesmith.export.gguf import export_gguf
    from tunesmith.generation import generate_tokens, stop_token_ids
    from tunesmith.models.packed_linear import packing_available

    folder = OUT / "gguf-default"
    found = sorted(folder.glob("*-f16.gguf"))
    gguf = found[0] if found else export_gguf("default", folder, "f16", log=lambda *a: None).files["f16"]
    llm = Llama(model_path=str(gguf), n_threads=torch.get_num_threads(), n_ctx=2048, verbose=False)
    stops = set(stop_token_ids(tokenizer))

    def llama_reply(ids):
        out = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if token in stops:
                break
            out.append(token)
            if len(out) >= new:
                break
        return out

    llama_reply(prompt_ids(tokenizer, convs[0])[:8])
    served = ServingEngine(model, tokenizer)
    modes = [("engine-b1 fp32", lambda c: generate_tokens(model, tokenizer, [c], max_new_tokens=new, batch_size=1)[0]),
             ("served-b1 fp32", lambda c: served([c], new)[0])]
    if packing_available():     # native bf16: what `tunesmith serve` (--dtype auto) and `eval` run on this CPU
        served_bf16 = ServingEngine(model, tokenizer, precision="bf16")
        modes.append(("served-b1 bf16", lambda c: served_bf16([c], new)[0]))
    modes.append(("llama.cpp f16", lambda c: llama_reply(prompt_ids(tokenizer, c))))
    seconds, replies = collections.defaultdict(list), collections.defaultdict(list)
    for conv in convs:
        for name, fn in modes:
            out, dt = timed(fn, conv)
            seconds[name].append(dt)
            replies[name].append(out)
    agree = sum(a == b for a, b in zip(replies["served-b1 fp32"], replies["llama.cpp f16"])) / len(convs)
    return {name: summary(replies[name], seconds[name]) for name in seconds}, agree


def summary(replies, seconds: list[float]) -> dict:
    tokens = sum(len(r) for r in replies)
    row = {"tokens": tokens, "seconds": round(sum(seconds), 3), "tokens_per_s": round(tokens / sum(seconds), 2)}
    if len(seconds) > 1:
        q = statistics.quantiles(seconds, n=20)
        row.update(p50_s=round(statistics.median(seconds), 3), p95_s=round(q[-1], 3))
    return row


def breakdown(model, tokenizer, convs, steps: int, rounds: int) -> dict:
    """ms per decode step by part, before (concatenating cache) and after (slabs), at batch 1 and 16."""
    from transformers.cache_utils import DynamicLayer

    from tunesmith.data.tokenize import prompt_ids
    from tunesmith.generation import Engine, GenRequest
    from tunesmith.generation import engine as engine_module
    from tunesmith.generation.cache import SlabLayer

    spent = collections.Counter()
    decoding = [False]      # only time spent inside decode steps counts (not the prefill's forward)

    def clock(key, fn, outer=False):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            if outer:
                decoding[0] = True
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if decoding[0]:
                    spent[key] += time.perf_counter() - t
                if outer:
                    decoding[0] = False
        return wrapper

    DynamicLayer.update = clock("cache", DynamicLayer.update)
    SlabLayer.update = clock("cache", SlabLayer.update)
    engine_module.choose_tokens = clock("sampling", engine_module.choose_tokens)
    slab_cache = engine_module.slab_cache
    threads_before = torch.get_num_threads()
    results = {}
    for _ in range(rounds):
        for batch in (1, 16):
            for variant, threads in (("before", 1), ("after", 1), ("after", os.cpu_count())):
                torch.set_num_threads(threads)
                engine_module.slab_cache = slab_cache if variant == "after" else (lambda *a, **k: None)
                # No stop tokens: every row decodes exactly `steps` tokens.
                rows = [GenRequest(prompt_ids=prompt_ids(tokenizer, convs[i % len(convs)]), sink=None, max_tokens=steps + 1,
                                   temperature=0.0, text=False, timeout_s=float("inf")) for i in range(batch)]
                engine = Engine(model, tokenizer, None, [], max_batch=batch)
                engine.forward.last_logits = clock("forward", engine.forward.last_logits)
                engine._decode = clock("step", engine._decode, outer=True)
                spent.clear()
                engine.run(rows)
                n = engine.stats["decode_steps"]
                ms = {k: 1000 * spent[k] / n for k in ("step", "forward", "cache", "sampling")}
                parts = {"model": ms["forward"] - ms["cache"], "kv_cache_writes": ms["cache"], "sampling": ms["sampling"],
                         "engine_python": ms["step"] - ms["forward"] - ms["sampling"], "total": ms["step"]}
                key = f"b{batch}-{variant}-t{threads}"
                if key not in results or parts["total"] < results[key]["total"]:
                    results[key] = {k: round(v, 2) for k, v in parts.items()}
    engine_module.slab_cache = slab_cache
    torch.set_num_threads(threads_before)
    return results


def step_ab(model, steps: int = 32, rounds: int = 4) -> list[dict]:
    """ms per one-token step through transformers' forward ("hf") and through the decode step, per precision and batch."""
    from tunesmith.generation.batching import left_pad, positions
    from tunesmith.generation.cache import ModelCall, new_cache, slab_cache
    from tunesmith.models.packed_linear import packing_available
    from tunesmith.train.precision import inference_precision

    g = torch.Generator().manual_seed(0)
    rows = []
    for precision in ["fp32"] + (["bf16"] if packing_available() else []):
        for batch in (1, 16):
            prompts = [torch.randint(0, 1000, (100 - 5 * i,), generator=g).tolist() for i in range(batch)]
            best, logits = {}, {}
            with torch.no_grad(), inference_precision(model, precision):
                for _ in range(rounds):
                    for name in ("hf", "step"):
                        call = ModelCall(model)
                        if name == "hf":
                            call.step = None
                        ids, mask = left_pad(prompts, 0, torch.device("cpu"))
                        cache = new_cache(model)
                        out = call.last_logits(cache, input_ids=ids, attention_mask=mask, position_ids=positions(mask))
                        cache, seen = slab_cache([cache], ids.shape[1]), []
                        t = time.perf_counter()
                        for _ in range(steps):
                            tokens = out.argmax(-1, keepdim=True)
                            mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
                            out = call.last_logits(cache, input_ids=tokens, attention_mask=mask,
                                                   position_ids=mask.sum(1, keepdim=True) - 1)
                            seen.append(out)
                        best[name] = min(best.get(name, float("inf")), (time.perf_counter() - t) / steps * 1000)
                        logits[name] = seen
            same = all(torch.equal(a, b) for a, b in zip(logits["hf"], logits["step"]))
            rows.append({"precision": precision, "batch": batch, "hf_ms": round(best["hf"], 2),
                         "step_ms": round(best["step"], 2), "gain": round(best["hf"] / best["step"], 3), "same": same})
    return rows


def report_step(model, args, load_before: float) -> None:
    rows = step_ab(model)
    print(f"CPU: {cpu_kind()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average "
          f"{round(load_before, 2)} -> {round(os.getloadavg()[0], 2)}")
    print("SmolLM2-135M, ms per one-token step after a ~100-token prompt, best of 4 interleaved rounds\n")
    print("| precision | batch | transformers' forward | decode step | gain | same logits |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['batch']} | {r['hf_ms']} | {r['step_ms']} | {r['gain']:.2f}x | {r['same']} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "generate_step.json").write_text(json.dumps({"cpu": cpu_kind(), "results": rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="held-out prompts (at most 60)")
    parser.add_argument("--n1", type=int, default=8, help="of those, prompts run one at a time (batch 1 modes)")
    parser.add_argument("--new", type=int, default=48, help="max new tokens per reply")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lookup", type=int, default=2, help="prompt lookup: the most tokens drafted per step")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of one decode step")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per breakdown run")
    parser.add_argument("--eval", action="store_true", help="only time a quickstart evaluation's generation, before and now")
    parser.add_argument("--llama", action="store_true", help="only time batch-1 decoding against llama.cpp's f16 GGUF")
    parser.add_argument("--step", action="store_true", help="only time decode steps: transformers' forward vs decode_step.py")
    parser.add_argument("--adapter", help="--eval: the tuned adapter (default: an untrained LoRA)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="--eval: fp32, or bf16 autocast (what eval runs on CPUs with native bf16)")
    args = parser.parse_args()

    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.models.default import ensure_default_model

    path = ensure_default_model()
    tokenizer, model = load_tokenizer(str(path)), load_model(str(path)).eval()
    convs = conversations(args.n)
    load_before = os.getloadavg()[0]
    if args.eval:
        return report_eval(model, tokenizer, args, load_before)
    if args.llama:
        return report_llama(model, tokenizer, args, load_before)
    if args.step:
        return report_step(model, args, load_before)
    engine_generate(model, tokenizer, convs[:1], 1, 2)          # first-call allocations are no mode's cost
    one, one_replies = batch1(model, tokenizer, convs[:args.n1], args.new, args.lookup)
    many, many_replies = batch16(model, tokenizer, convs, args.new, args.rounds)
    results = {**one, **many}
    same = {"b1": len({json.dumps(r) for r in one_replies.values()}) == 1,
            "b16": len({json.dumps(r) for r in many_replies.values()}) == 1}
    parts = breakdown(model, tokenizer, convs, args.steps, args.rounds) if args.breakdown else None
    load_after = os.getloadavg()[0]
    info = {"cpu": cpu_kind(), "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "loadavg_before": round(load_before, 2), "loadavg_after": round(load_after, 2),
            "args": vars(args)}

    print(f"CPU: {info['cpu']}, {info['cores']} cores, torch threads {info['threads']}, "
          f"load average {info['loadavg_before']} -> {info['loadavg_after']}")
    print(f"SmolLM2-135M fp32, quickstart few-shot prompts, greedy, max {args.new} new tokens; identical replies: "
          f"batch 1 {same['b1']}, batch 16 {same['b16']}\n")
    print("| mode | prompts | tokens | seconds | tokens/s | p50 s | p95 s | vs hf, same batch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        ref = results["hf-b1" if "b1" in name and "b16" not in name else "hf-b16"]["tokens_per_s"]
        prompts = args.n1 if "b16" not in name else args.n
        print(f"| {name} | {prompts} | {row['tokens']} | {row['seconds']} | {row['tokens_per_s']} | {row.get('p50_s', '')} | "
              f"{row.get('p95_s', '')} | {row['tokens_per_s'] / ref:.2f}x |")
    for kind in ("engine", "served"):
        gain = results[f"{kind}-b1+lookup"]["tokens_per_s"] / results[f"{kind}-b1"]["tokens_per_s"]
        print(f"\nprompt lookup {args.lookup} at batch 1, {kind}: {gain:.2f}x the tokens/s of plain decoding", end="")
    print()
    if parts:
        print("\nms per decode step (best of rounds); before = transformers' concatenating cache, after = slabs\n")
        print("| batch | cache | torch threads | model | KV-cache writes | sampling | engine Python | total |")
        print("|---|---|---|---|---|---|---|---|")
        for key, p in sorted(parts.items(), key=lambda kv: (int(kv[0].split("-")[0][1:]), kv[0])):
            batch, variant, threads = key.split("-")
            print(f"| {batch[1:]} | {variant} | {threads[1:]} | {p['model']} | {p['kv_cache_writes']} | {p['sampling']} | "
                  f"{p['engine_python']} | {p['total']} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "generate.json").write_text(json.dumps({"info": info, "results": results, "identical": same,
                                                   "breakdown": parts}, indent=2))


def report_eval(model, tokenizer, args, load_before: float) -> None:
    engine_generate(model, tokenizer, conversations(1), 1, 2)
    # bf16: the first pass over each new shape sets up its oneDNN kernels (a one-time cost that made the
    # first system's "before" 6x slower than the others'), so bf16 takes the best of two rounds.
    rounds = 2 if args.precision == "bf16" else 1
    rows, same = quickstart_eval(model, tokenizer, args.adapter, 64, args.precision, rounds)
    info = {"cpu": cpu_kind(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "loadavg_before": round(load_before, 2), "loadavg_after": round(os.getloadavg()[0], 2),
            "adapter": args.adapter or "untrained LoRA r16"}
    print(f"CPU: {info['cpu']}, {info['cores']} cores, torch threads {info['threads']}, load average "
          f"{info['loadavg_before']} -> {info['loadavg_after']}; adapter: {info['adapter']}")
    print(f"Quickstart evaluation's generation, {args.precision}, greedy, max 64 new tokens, 60 held-out orders per "
          f"system, best of {rounds} round(s); replies identical before and now: {same:.0%}\n")
    print("| system | tokens | before s (generate, batch 16) | now s (engine, eval defaults) | speed-up |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['tokens']} | {r['before_s']} | {r['now_s']} | {r['before_s'] / r['now_s']:.2f}x |")
    before, now = sum(r["before_s"] for r in rows.values()), sum(r["now_s"] for r in rows.values())
    print(f"| all three | {sum(r['tokens'] for r in rows.values())} | {before:.2f} | {now:.2f} | {before / now:.2f}x |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "generate_eval.json").write_text(json.dumps({"info": info, "systems": rows, "identical": same}, indent=2))


def report_llama(model, tokenizer, args, load_before: float) -> None:
    convs = [c[-1:] for c in conversations(args.n1)]
    engine_generate(model, tokenizer, convs[:1], 1, 2)
    rows, agree = llama_compare(model, tokenizer, convs, 64)
    print(f"CPU: {cpu_kind()}, {os.cpu_count()} cores, torch and llama.cpp threads {torch.get_num_threads()}, load "
          f"average {round(load_before, 2)} -> {round(os.getloadavg()[0], 2)}")
    print(f"SmolLM2-135M, {len(convs)} zero-shot quickstart prompts one at a time, greedy, at most 64 new tokens; "
          f"replies identical for {agree:.0%} of prompts\n")
    print("| mode | tokens | seconds | tokens/s | p50 s | vs llama.cpp |")
    print("|---|---|---|---|---|---|")
    ref = rows["llama.cpp f16"]["tokens_per_s"]
    for name, r in rows.items():
        print(f"| {name} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | {r.get('p50_s', '')} | "
              f"{r['tokens_per_s'] / ref:.2f}x |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "generate_llama.json").write_text(json.dumps({"cpu": cpu_kind(), "results": rows, "agree": agree}, indent=2))


if __name__ == "__main__":
    main()
