"""Every fine-tuning method on the quickstart task; writes docs/methods.md.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/methods.py [--steps 12] [--eval-examples 16] [--methods lora,dora,lora+lora_fa]
    .venv/bin/python bench/methods.py --render     # rewrite docs/methods.md from bench/out/methods/results.json

Work: the quickstart run (src/tunesmith/assets/quickstart/config.yaml: SmolLM2-135M-Instruct, free-
text orders -> one JSON object) with `method.name` changed and, to fit a shared CPU, a reduced
budget: `--steps` optimizer steps of 8 examples, held-out scoring on the first `--eval-examples`
test examples, greedy decoding. Each method uses the learning rate listed in LR (methods with few
parameters need larger steps); every other key is the quickstart's. The LoRA+ and LoRA-FA
optimizers run as rows of their own (VARIANTS: method lora plus the optimizer's key). The base model's zero-shot
score is measured once, in the lora run, as the reference row.

Each method runs in its own subprocess so its peak RSS is its own. Reported per method:
  trainable   parameters that receive gradients
  peak RSS    the subprocess's maximum resident set size (model load, training and evaluation)
  tokens/s    non-padding training tokens per second of training-loop wall time
  json_exact / json_field_f1   on the held-out examples
and each method's tokens/s and RSS as a ratio to peft LoRA (the reference) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no run-time downloads (importing peft asks the hub, as quiet.py says)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "methods"
DOC = ROOT / "docs" / "methods.md"

LR = {"full": 5e-5, "freeze": 1e-4, "spectrum": 1e-4, "lora": 1e-3, "rslora": 1e-3, "dora": 1e-3, "qlora": 1e-3,
      "delta_lora": 1e-3, "vera": 1e-2, "ia3": 1e-2, "prefix": 1e-2, "prompt": 3e-2, "bottleneck": 3e-4,
      # LoRA+ gives B 16x the base rate, so its base rate is lower than plain LoRA's
      "lora+loraplus": 5e-4, "lora+lora_fa": 1e-3}
EXTRA = {"prompt": ["method.prompt_init_text=Extract the order as a JSON object."]}
# Rows that are a registered method plus its own keys (the LoRA+ and LoRA-FA optimizers are lora options).
VARIANTS = {"lora+loraplus": ("lora", ["method.loraplus_lr_ratio=16"]),
            "lora+lora_fa": ("lora", ["method.lora_fa=true"])}


def method_overrides(name: str, steps: int, eval_examples: int) -> list[str]:
    """The `--set` overrides of one row: the quickstart config with the method switched."""
    method, keys = VARIANTS.get(name, (name, []))
    return [f"method.name={method}", *keys, f"train.max_steps={steps}", f"train.lr={LR.get(name, 1e-3)}",
            f"eval.max_examples={eval_examples}", "output.merge=false",
            "eval.baselines=[zero-shot]" if name == "lora" else "eval.baselines=[]", *EXTRA.get(name, [])]


def run_one(name: str, steps: int, eval_examples: int, out: Path) -> dict:
    """Child process: one method, one quickstart run; prints its result as JSON."""
    from tunesmith.events import Events, Message
    from tunesmith.quickstart import run_quickstart

    lines = []
    overrides = method_overrides(name, steps, eval_examples)
    t0 = time.perf_counter()
    collect = Events(lambda event: lines.append(event.text) if isinstance(event, Message) else None)
    result = run_quickstart(out / name, overrides, events=collect)
    wall = time.perf_counter() - t0
    trainable = next(int(line.split(", ")[1].split(" ")[0].replace(",", "")) for line in lines if line.startswith("method: "))
    systems = result.eval_report["systems"]
    row = {"method": name, "trainable": trainable, "tokens_per_s": result.train.tokens_per_s, "steps": result.train.steps,
           "first_loss": result.train.first_loss, "final_loss": result.train.final_loss, "wall_s": wall,
           "lr": LR.get(name, 1e-3), "tuned": systems["tuned"], "n_eval": result.eval_report["n_examples"]}
    if "base_zero_shot" in systems:
        row["base_zero_shot"] = systems["base_zero_shot"]
    return row


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--eval-examples", str(args.eval_examples)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"method": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far; children run one at a time and the
    # heaviest (full) may come first, so each child also reports its own peak (see --child).
    row.setdefault("peak_rss_mb", max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)
    return row


# The guide above the results. The methods and options tables between its markers are generated
# from the registered options models (tunesmith.methods.docs), never written here by hand.
GUIDE_BEFORE_TABLES = """
## Choosing a method

`method.name` picks one. Each method takes only its own options, declared once as a pydantic model in
the method's module; the tables below, the `method:` part of `tunesmith config init` and the
options lines of `tunesmith methods` are all generated from those models
(`python -m tunesmith.methods.docs` rewrites the tables here, `tunesmith methods --markdown` prints
them; a test keeps them in sync).

A key the method does not take is a config error that names the method and the keys it takes, with
a "did you mean" for a typo (`unknown key 'method.rr' for method 'lora' (did you mean 'method.r'?)`)
or the methods that take it (`method.dora is set but method 'ia3' does not use it`). Two exceptions
keep configs working when only `method.name` changes: the shared adapter-shape keys `r`, `alpha`,
`dropout`, `target_modules` are accepted by every method (one that does not use them ignores them),
and another method's key at its default changes nothing and is accepted (config.yaml files saved by
earlier versions spell out every method's keys). `tunesmith methods --model M` prints trainable
parameters and a memory estimate for any model.

"""

GUIDE_AFTER_TABLES = """

Optimizers for the LoRA family: `loraplus_lr_ratio: 16` (LoRA+, B learns 16x faster than A) or
`lora_fa: true` (LoRA-FA: A frozen, B trained with the projected gradient); one at a time, and
LoRA-FA not with DoRA; LoRA-FA's projected gradient uses the adapter's own scale (alpha/sqrt(r)
under rsLoRA). `method.name: rslora` and `dora` always apply their own flag, so their `rslora: false`
/ `dora: false` (the defaults every saved config.yaml spells out) change nothing; the other flag
still adds (`name: dora` with `rslora: true` is rsLoRA + DoRA). `qlora` merges on the fp32 base.
`delta_lora_start` with `delta_lora_lambda: 0` is a config error (the base weights would never
move). `output.merge: true` with a method that cannot merge is refused before training;
`tunesmith merge` / GGUF export of such an adapter say why (prefix: the adapter lives in the KV
cache; prompt: extra input tokens; bottleneck: extra layers), also for a prefix / prompt-tuning
folder saved by plain peft (its `adapter_config.json` `peft_type`) or a bottleneck folder without
`tunesmith.json`.

`tunesmith spectrum scan MODEL` prints every weight matrix's SNR: singular values above the
Marchenko-Pastur edge sigma(sqrt(m) + sqrt(n)) count as signal (sigma estimated from the median
singular value), SNR = signal energy / noise energy, and the matrices Spectrum would train.
`--json FILE` writes the same rows as strict JSON: a matrix with no energy at or below the edge (a
noise-free low-rank matrix) has an infinite SNR, written as `"snr": null, "snr_infinite": true`
(it ranks above every finite SNR); an all-zero matrix has SNR 0.

## Adding a method

One new file in `src/tunesmith/methods/` (the package imports every module in it, so nothing else
lists methods) holding:

1. an options model: a subclass of `MethodOptions`, or of the shared field groups in
   `tunesmith.methods.options` (`AdapterShape` = `r`, `alpha`, `dropout`, `target_modules`;
   `TargetModules`, `AdapterDropout`, `LowRank`), with a default, bounds and a one-line
   `description` for each new key;
2. a `Method` subclass with `name`, a one-line `summary`, `options` (that model), `order` (where it
   is listed), `kind` (`"adapter"` or `"full"`), `mergeable` / `gguf_exportable`, and `prepare(model,
   options, lr) -> Prepared` (plus `check` for combinations of its options that make no sense),
   decorated with `@register_method`.

Then one row in `CASES` (and its trainable-parameter formula in `FORMULAS`) of
`tests/methods/test_matrix.py`, which fails until every registered method has one, and
`python -m tunesmith.methods.docs` for the tables above.
"""


def guide() -> str:
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from tunesmith.methods.docs import options_section

    return GUIDE_BEFORE_TABLES + options_section() + GUIDE_AFTER_TABLES


def write_doc(rows: list[dict], args, command: str) -> None:
    ref = next((r for r in rows if r["method"] == "lora" and "error" not in r), None)
    base = ref.get("base_zero_shot") if ref else None
    lines = ["# Fine-tuning methods", guide(), "## On the quickstart task", "",
             "Generated by `bench/methods.py`; re-run with:", "", f"    {command}", "",
             f"Quickstart task (SmolLM2-135M-Instruct, free-text orders -> JSON), **reduced budget**: {args.steps} optimizer "
             f"steps of 8 examples ({8 * args.steps} of 480 training examples seen once), scored on the first "
             f"{args.eval_examples} of 60 held-out examples, greedy decoding. Machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores shared with other jobs (one torch thread), `train.precision: auto`. "
             "Ratios are against peft LoRA measured in the same run. Peak RSS covers model load, training and evaluation "
             "of that method's own process.", "",
             "| method | trainable params | lr | peak RSS (MB) | RSS vs LoRA | tokens/s | tokens/s vs LoRA | loss first -> last | json_exact | json_field_f1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| base model, zero-shot | 0 | - | - | - | - | - | - | {base.get('json_exact', 0):.3f} | "
                     f"{base.get('json_field_f1', 0):.3f} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | | |")
            continue
        rss = f"{r['peak_rss_mb']:.0f}"
        rss_ratio = f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x" if ref else "-"
        tps_ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['lr']:g} | {rss} | {rss_ratio} | {r['tokens_per_s']:.0f} | "
                     f"{tps_ratio} | {r['first_loss']:.3f} -> {r['final_loss']:.3f} | {r['tuned'].get('json_exact', 0):.3f} | "
                     f"{r['tuned'].get('json_field_f1', 0):.3f} |")
    lines += ["", "**Caveat on speed.** The machine is shared with other jobs and its load changed during the run "
              "(load average between about 1.3 and 7; the methods run first, lora to qlora, met the heaviest load), "
              "so tokens/s mixes a method's cost with the load it met. Read the throughput ratios as rough; "
              "trainable parameters, loss and accuracy do not depend on load. The lora row's RSS includes "
              "its zero-shot baseline evaluation.", "",
              "Accuracy after so few steps says how fast a method starts to learn this task, not where it ends; "
              "`tunesmith quickstart --set method.name=NAME` runs the full epoch. `tunesmith methods` lists the same methods "
              "with trainable parameters and a memory estimate for any model, without loading weights.", ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--eval-examples", type=int, default=24)
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all, with lora+loraplus and lora+lora_fa)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help="only rewrite docs/methods.md from saved results")
    args = parser.parse_args()
    if args.render:
        saved = json.loads((OUT / "results.json").read_text())
        rows = saved["rows"] if isinstance(saved, dict) else saved
        done = next(r for r in rows if "error" not in r)
        args.steps, args.eval_examples = done["steps"], done["n_eval"]
        write_doc(rows, args, f"OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/methods.py --steps {args.steps} "
                              f"--eval-examples {args.eval_examples}")
        print(DOC.read_text())
        return
    if args.child:
        row = run_one(args.child, args.steps, args.eval_examples, OUT)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(row))
        return
    sys.path.insert(0, str(ROOT / "src"))
    from tunesmith.methods import METHODS

    names = [n for n in args.methods.split(",") if n] or list(METHODS) + list(VARIANTS)
    if "lora" in names:   # the reference runs first
        names.remove("lora")
        names.insert(0, "lora")
    rows = []
    for name in names:
        t0 = time.perf_counter()
        row = run_child(name, args)
        rows.append(row)
        print(f"{name}: {time.perf_counter() - t0:.0f}s {json.dumps(row)[:300]}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2))
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{threads}nice -n 10 .venv/bin/python bench/methods.py " + " ".join(sys.argv[1:])
    write_doc(rows, args, command.strip())
    print(DOC.read_text())


if __name__ == "__main__":
    main()
