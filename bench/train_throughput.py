"""Training throughput: tunesmith vs TRL's SFTTrainer on the same work, in one process tree.

    .venv/bin/python bench/train_throughput.py [--steps 8] [--examples 512] [--precision fp32] [--rev REV]
                                               [--model DIR] [--micro 6]

Work: SmolLM2-135M-Instruct (the embedded default), LoRA r=16 alpha=32 on all linear layers, an
instruction set of 512 examples of 50-500 tokens (responses are real English prose: Python
standard-library docstrings, so nothing is downloaded), 24 examples (~4k tokens) per optimizer
step (TRL's packing variant: 4 packed rows of 1024 tokens), the same number of steps and the same
learning rate for every system. Loss is on the response tokens only for every system (TRL:
prompt-completion data, its completion-only loss). tunesmith runs with `train.precision: auto`,
what a user gets: bf16 autocast on CPUs with native bf16 (AVX-512 bf16 / AMX), fp32 elsewhere.
`--precision fp32` runs every system in fp32 instead (tunesmith `train.precision: fp32`; TRL with
bf16=False, whose own default is bf16, with and without packing) and measures the peaks in fp32: what
a CPU without native bf16 gets, and a like-for-like comparison on one that has it.

On a machine with a CUDA GPU every system trains on the GPU (TRL without `use_cpu`) and the peaks are
measured there. `--model DIR` trains another HF folder instead of the embedded default (on the GPU
machine: a randomly initialised model of the same architecture, made by bench/random_model.py, since
the weights cannot travel there; speed does not depend on weight values). `--micro` sets tunesmith's
examples per forward pass (default 6, ~1k tokens: what bounds activation memory on a laptop).

`--rev REV` adds tunesmith as it was at a git revision (its `src/` exported with `git archive` and put
first on the child's PYTHONPATH), so a speed-up over an earlier version is measured in the same run.

Each system runs in its own subprocess so peak RSS is its own. Reported:
  effective tokens/s  non-padding tokens per second of training-loop wall time
  peak RSS            the subprocess's maximum resident set size
  held-out loss       mean NLL per response token on 32 held-out examples, computed afterwards by the
                      same code for every system (final training losses are not comparable across
                      different data orders)
  MFU                 model FLOPs/s over a bf16 matmul peak measured in this run; model FLOPs per
                      token = 4 x (non-embedding matmul params) + attention + lm_head at response tokens
                      (LoRA: forward + input-gradient backward; frozen weights get no weight gradient).
                      Two peaks, in bf16 (fp32 with --precision fp32): a large square matmul (2048^3, 8192^3 on a GPU: what the matrix units can do at best)
                      and the model's own linear shapes at one micro-batch of tokens, forward and
                      input-gradient (what a perfect implementation of this model could reach here).

The learning rate (1e-3) is higher than a long run would use so that a few steps move the held-out
loss visibly: with 2e-4 and zero-initialised B, every system's held-out loss stays at the base
model's to four decimals and the loss comparison says nothing.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import pydoc
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from revisions import source_at

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no run-time downloads (importing peft asks the hub, as quiet.py says)

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
LR, RANK, ALPHA, BATCH = 1e-3, 16, 32, 24
MICRO = 6  # tunesmith examples per forward pass (~1k tokens): bounds activation memory
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The memory a run is bounded by: host RSS on a CPU, allocated GPU memory on a GPU.
MEMORY_KEY, MEMORY_LABEL = ("peak_gpu_mb", "peak GPU memory (MB)") if DEVICE == "cuda" else ("peak_rss_mb", "peak RSS (MB)")
# The square matmul of the machine's peak: 2048^3 is over in microseconds on a GPU (launch cost, not the ceiling).
PEAK_SIZE = 8192 if DEVICE == "cuda" else 2048


# --- data --------------------------------------------------------------------------------------

MODULES = ["abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
           "colorsys", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
           "decimal", "difflib", "dis", "email", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib",
           "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
           "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging",
           "lzma", "mailbox", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil",
           "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "reprlib", "sched",
           "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "ssl",
           "stat", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
           "timeit", "token", "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse",
           "uuid", "warnings", "wave", "weakref", "xml.dom", "zipfile", "zlib"]


def docstring_pool() -> list[tuple[str, str]]:
    """(name, docstring) for stdlib modules, classes and functions with substantial prose."""
    pool = []
    for mod_name in MODULES:
        try:
            mod = pydoc.locate(mod_name)
        except Exception:
            continue
        if mod is None:
            continue
        for name, obj in [(mod_name, mod)] + [(f"{mod_name}.{n}", o) for n, o in vars(mod).items() if not n.startswith("_")]:
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)) else None
            if doc and len(doc.split()) >= 30 and (inspect.ismodule(obj) or getattr(obj, "__module__", "") == mod.__name__):
                pool.append((name, doc))
    return pool


def n_tokens(tokenizer, chat: list[dict], generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_dataset(tokenizer, n: int, seed: int = 0) -> list[dict]:
    """Prompt-completion chats of 50-500 tokens, lengths spread evenly over that range."""
    rng = random.Random(seed)
    pool = docstring_pool()
    rng.shuffle(pool)
    rows = []
    questions = ["Explain what {} does.", "Describe the Python object {}.", "What is {} for? Give the details.",
                 "Write the documentation for {}."]
    for i in range(n):
        name, doc = pool[i % len(pool)]
        target = rng.randint(50, 500)
        prompt = [{"role": "user", "content": rng.choice(questions).format(name)}]
        words = doc.split()
        answer = " ".join(words)
        # Trim the answer until the whole rendered chat fits the drawn length.
        while True:
            chat = prompt + [{"role": "assistant", "content": answer}]
            length = n_tokens(tokenizer, chat)
            if length <= target or len(words) <= 8:
                break
            words = words[: max(8, int(len(words) * target / length) - 1)]
            answer = " ".join(words)
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return rows


# --- one system per subprocess -----------------------------------------------------------------

def flops_per_token(config, target_fraction: float, avg_len: float) -> float:
    d, L, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size
    body = L * per_layer
    attention = L * 2 * 2 * d * avg_len / 2  # QK^T and AV over the causal half, forward
    head = target_fraction * v * d
    # forward (2 FLOP per MAC) + backward through activations (another 2)
    return 4 * (body + attention + head)


def run_tunesmith(rows, model_dir, steps, out_dir, precision="auto", micro=MICRO):
    from tunesmith.config import DataConfig, TrainConfig
    from tunesmith.data.schema import Sample
    from tunesmith.data.tokenize import tokenize_all
    from tunesmith.methods import method_options, prepare_method
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.trainer import Trainer

    tok = load_tokenizer(str(model_dir))
    samples = [Sample(messages=r["prompt"] + r["completion"]) for r in rows]
    data, _ = tokenize_all(tok, samples, max_len=1024)
    torch.manual_seed(0)
    model = load_model(str(model_dir))
    prepared = prepare_method(model, method_options(name="lora", r=RANK, alpha=ALPHA, dropout=0.0), LR)
    cfg = TrainConfig(max_steps=steps, batch_size=BATCH, micro_batch_size=micro, lr=LR, warmup_ratio=0.0,
                      scheduler="constant", precision=precision, seed=0)
    trainer = Trainer(cfg, DataConfig(max_len=1024, packing=True), prepared, tok, data, [], out_dir)
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": result.tokens, "final_loss": result.final_loss, "adapter": str(result.output_dir),
            "precision": trainer.precision}


def run_trl(rows, model_dir, steps, out_dir, variant):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    kwargs = dict(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=8, gradient_accumulation_steps=3,
                  learning_rate=LR, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                  report_to="none", use_cpu=DEVICE == "cpu", seed=0, max_length=1024, dataloader_num_workers=0)
    if variant == "bf16":
        kwargs.update(bf16=True)
    elif variant.endswith("packing"):
        # Packed rows are max_length (1024) tokens each: 4 rows a step is the same ~4k tokens per step.
        kwargs.update(bf16=variant.startswith("bf16"), packing=True, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1)
    elif variant == "fp32":
        kwargs.update(bf16=False)
    args = SFTConfig(**kwargs)
    timing = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timing["t0"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            timing["t1"] = time.perf_counter()

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[Clock()])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # TRL logs the running count of non-padding tokens it trained on.
    n_tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    adapter = Path(out_dir) / "adapter"
    trainer.model.save_pretrained(adapter)
    return {"wall": timing["t1"] - timing["t0"], "tokens": float(n_tokens), "final_loss": logs[-1]["loss"],
            "adapter": str(adapter), "bf16": bool(args.bf16), "packing": bool(args.packing),
            "padding_free": bool(getattr(args, "padding_free", False))}


def heldout_loss(model_dir, adapter, rows) -> float:
    from peft import PeftModel

    from tunesmith.data.packing import collate
    from tunesmith.data.schema import Sample
    from tunesmith.data.tokenize import tokenize_all
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.loss import CausalLMLoss

    tok = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir))
    model = (PeftModel.from_pretrained(model, adapter) if adapter else model).eval().to(DEVICE)
    data, _ = tokenize_all(tok, [Sample(messages=r["prompt"] + r["completion"]) for r in rows], max_len=1024)
    loss = CausalLMLoss(model)
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(data), 8):
            b = collate(data[i:i + 8], pack=False, max_len=1024, pad_id=tok.pad_token_id)
            nll, n = loss(b.input_ids.to(DEVICE), b.position_ids.to(DEVICE), b.targets.to(DEVICE))
            total, count = total + float(nll), count + float(n)
    return total / count


def child(args) -> None:
    payload = json.loads(Path(args.child).read_text())
    rows, held = payload["rows"], payload["heldout"]
    out_dir = OUT / f"run-{args.system.replace('/', '_')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.system.startswith("tunesmith"):
        res = run_tunesmith(rows, payload["model_dir"], args.steps, out_dir, args.precision, args.micro)
    else:
        res = run_trl(rows, payload["model_dir"], args.steps, out_dir, args.system.removeprefix("trl_"))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    res["heldout_loss"] = heldout_loss(payload["model_dir"], res["adapter"], held)
    Path(args.result).write_text(json.dumps(res))


# --- driver ------------------------------------------------------------------------------------

def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed_gflops(pairs: list[tuple[torch.Tensor, torch.Tensor]], reps: int) -> float:
    """GFLOP/s of the products a @ b, the better of PyTorch's own product and, on a CPU, oneDNN's with b packed
    once (models/packed_linear.py: on AMD CPUs MKL's fp32 sgemm, PyTorch's product, runs at half oneDNN's speed,
    so a peak from it alone would flatter every MFU)."""
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs) * reps
    products = [[functools.partial(torch.matmul, a, b) for a, b in pairs]]
    if DEVICE == "cpu":
        from tunesmith.models import packed_linear

        if packed_linear._ops_available():
            products.append([functools.partial(packed_linear.packed_matmul, a, packed_linear.pack(b.t().contiguous()))
                             for a, b in pairs])
    best = 0.0
    for calls in products:
        for call in calls:
            call()
        _sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            for call in calls:
                call()
        _sync()
        best = max(best, flops / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_peak_gflops(size: int = PEAK_SIZE, reps: int = 10, dtype=torch.bfloat16) -> float:
    """The machine's matmul ceiling in `dtype`: one large square product."""
    if DEVICE == "cuda":
        reps = 20
    a = torch.randn(size, size, dtype=dtype, device=DEVICE)
    return _timed_gflops([(a, torch.randn(size, size, dtype=dtype, device=DEVICE))], reps)


def model_shape_peak_gflops(config, tokens: int = 1024, reps: int = 10, dtype=torch.bfloat16) -> float:
    """GFLOP/s in `dtype` of the model's own linear layers at `tokens` rows: forward (x @ W^T) and the
    input-gradient backward (dy @ W) of q, k, v, o, gate, up and down."""
    d, f = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]   # (in, out)
    pairs = []
    for n_in, n_out in shapes:
        w = torch.randn(n_in, n_out, dtype=dtype, device=DEVICE)
        pairs.append((torch.randn(tokens, n_in, dtype=dtype, device=DEVICE), w))                  # forward
        pairs.append((torch.randn(tokens, n_out, dtype=dtype, device=DEVICE), w.t().contiguous()))  # grad input
    return _timed_gflops(pairs, reps)


# Per --precision: the systems run, and the dtype of the peaks.
SYSTEMS = {"auto": ["trl_default", "trl_bf16", "trl_bf16_packing", "tunesmith"],
           "fp32": ["trl_fp32", "trl_fp32_packing", "tunesmith"]}
PEAK_DTYPE = {"auto": torch.bfloat16, "fp32": torch.float32}


def machine_kind() -> str:
    """The label speed claims carry: native bf16 or not, and whether the kernels were limited by env."""
    if DEVICE == "cuda":
        return f"GPU {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    kind = "AVX-512 bf16" if "avx512_bf16" in flags else "AVX2 only"
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        kind += f", kernels limited to {os.environ['ATEN_CPU_CAPABILITY']} (simulated)"
    return f"{kind}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--precision", choices=sorted(SYSTEMS), default="auto",
                    help="auto: tunesmith's train.precision auto vs TRL's default, bf16 and bf16+packing; "
                         "fp32: every system in fp32")
    ap.add_argument("--systems", help="comma-separated subset of the --precision's systems")
    ap.add_argument("--rev", action="append", default=[],
                    help="also run tunesmith as it was at this git revision (its src/ from git archive); repeatable")
    ap.add_argument("--model", help="HF model folder to train (default: the embedded default model)")
    ap.add_argument("--micro", type=int, default=MICRO, help="tunesmith's examples per forward pass")
    ap.add_argument("--child")
    ap.add_argument("--system")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        return child(args)
    systems = args.systems.split(",") if args.systems else SYSTEMS[args.precision]
    envs = {system: {} for system in systems}
    for rev in args.rev:
        systems.append(f"tunesmith@{rev}")
        envs[systems[-1]] = {"PYTHONPATH": str(source_at(rev, OUT))}
    dtype = PEAK_DTYPE[args.precision]
    dtype_name = str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float32", "fp32")

    from tunesmith.models import load_tokenizer
    from tunesmith.models.default import ensure_default_model

    model_dir = Path(args.model).resolve() if args.model else ensure_default_model()
    tok = load_tokenizer(str(model_dir))
    rows = build_dataset(tok, args.examples + 32)
    train_rows, held = rows[:args.examples], rows[args.examples:]
    lengths = [n_tokens(tok, r["prompt"] + r["completion"]) for r in train_rows]
    OUT.mkdir(parents=True, exist_ok=True)
    payload = OUT / "payload.json"
    payload.write_text(json.dumps({"rows": train_rows, "heldout": held, "model_dir": str(model_dir)}))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    resp = [n_tokens(tok, r["prompt"] + r["completion"]) - n_tokens(tok, r["prompt"], True) for r in train_rows]
    fpt = flops_per_token(config, sum(resp) / sum(lengths), sum(lengths) / len(lengths))
    peak = matmul_peak_gflops(dtype=dtype)
    shape_peak = model_shape_peak_gflops(config, dtype=dtype)
    print(f"data: {len(train_rows)} examples, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths)/len(lengths):.0f}); "
          f"{BATCH} examples/step (~{BATCH * sum(lengths) / len(lengths):.0f} tokens); {args.steps} steps; "
          f"{dtype_name} matmul peak {peak:.0f} GFLOP/s ({PEAK_SIZE}^3), {shape_peak:.0f} GFLOP/s (model shapes, 1024 tokens); "
          f"{fpt / 1e6:.0f} MFLOP per token; machine: {machine_kind()}", flush=True)
    results = {}
    for system in systems:
        res_path = OUT / f"result-{system.replace('/', '_')}.json"
        cmd = [sys.executable, __file__, "--child", str(payload), "--system", system, "--result", str(res_path),
               "--steps", str(args.steps), "--precision", args.precision, "--micro", str(args.micro)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **envs[system]})
        if r.returncode != 0:
            print(f"{system}: FAILED\n{r.stderr[-3000:]}", flush=True)
            continue
        results[system] = json.loads(res_path.read_text())
        res = results[system]
        print(f"{system}: {res['tokens'] / res['wall']:.0f} tok/s, {res[MEMORY_KEY]:.0f} MB, "
              f"precision {res.get('precision', 'bf16' if res.get('bf16') else 'fp32')}, held-out loss "
              f"{res['heldout_loss']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    if not results:
        return
    base_loss = heldout_loss(model_dir, None, held)
    reference = systems[0] if systems[0].startswith("trl") else None   # TRL's default configuration for this precision
    best_trl = max((s for s in results if s.startswith("trl")), key=lambda s: results[s]["tokens"] / results[s]["wall"],
                   default=None)
    header = (f"| system | effective tok/s | vs {reference or 'TRL default'} | vs best TRL | {MEMORY_LABEL} | final train loss | "
              f"held-out loss | MFU ({PEAK_SIZE}^3 peak) | MFU (model-shape peak) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for system, res in results.items():
        tps = res["tokens"] / res["wall"]
        vs_default = tps / (results[reference]["tokens"] / results[reference]["wall"]) if reference in results else float("nan")
        vs_best = tps / (results[best_trl]["tokens"] / results[best_trl]["wall"]) if best_trl else float("nan")
        mfu, shape_mfu = tps * fpt / (peak * 1e9), tps * fpt / (shape_peak * 1e9)
        prec = res.get("precision", "bf16" if res.get("bf16") else "fp32")
        lines.append(f"| {system} ({prec}) | {tps:.0f} | {vs_default:.2f}x | {vs_best:.2f}x | {res[MEMORY_KEY]:.0f} | "
                     f"{res['final_loss']:.4f} | {res['heldout_loss']:.4f} | {100 * mfu:.0f}% | {100 * shape_mfu:.0f}% |")
    lines.append(f"\nheld-out loss of the base model (no training): {base_loss:.4f}; {dtype_name} peaks: {peak:.0f} GFLOP/s "
                 f"({PEAK_SIZE}^3), {shape_peak:.0f} GFLOP/s (model shapes); {fpt / 1e6:.0f} MFLOP per token; machine: {machine_kind()}")
    table = "\n".join(lines)
    print(table)
    (OUT / "train_throughput.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
