"""`tunesmith data clean` vs the pipeline a user would write with `datasets` + datasketch, same data, same run.

    nice -n 10 .venv/bin/python bench/data_clean.py [--n 200000] [--seed 0]

Data: N generated chat examples in `messages` JSONL (a user question of 25-45 words and an answer
of 20-40 words from a 5,000-word vocabulary; about 100 tokens each with SmolLM2's template).
About 4 % are exact copies of an earlier example (some with changed case and spacing), about 6 %
are copies with one word replaced, and 0.5 % have an empty answer. Nothing is downloaded.

Systems, each in its own subprocess so its peak RSS is its own:
  tunesmith             `tunesmith data clean IN -o OUT` (defaults: normalise, empty removal,
                        exact dedup, MinHash LSH word 5-grams / 0.8 / 128 permutations)
  tunesmith+tokens      the same with `--max-tokens 512` (SmolLM2 tokenizer and chat template)
  datasets+datasketch   `load_dataset("json")`, `.map` to normalise, `.filter` for empties and
                        exact duplicates, then one `datasketch.MinHash` per example (update_batch of
                        the same 5-gram shingles) into `MinHashLSH(0.8, 128)`, `.to_json`

Reported: wall time of the whole command (start-up and imports included), peak RSS (the
subprocess's ru_maxrss), examples/s (input examples / wall), and the removal counts, so the
outputs can be compared. Figures land in bench/out/data_clean.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no run-time downloads (importing peft asks the hub, as quiet.py says)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "data_clean"
PY = sys.executable

REFERENCE = r'''
import hashlib, json, sys, unicodedata, re
from datasets import load_dataset, disable_progress_bars
from datasketch import MinHash, MinHashLSH

disable_progress_bars()
src, dst = sys.argv[1], sys.argv[2]
ds = load_dataset("json", data_files=src, split="train")

def norm(batch):
    batch["messages"] = [[{"role": m["role"], "content": unicodedata.normalize("NFC", m["content"]).strip()} for m in msgs]
                         for msgs in batch["messages"]]
    return batch

ds = ds.map(norm, batched=True)
n = len(ds)
ds = ds.filter(lambda ex: all(m["content"] for m in ex["messages"]))
empty = n - len(ds)
seen = set()
def unique(ex):
    key = hashlib.md5(" ".join(f"{m['role']}:{' '.join(m['content'].lower().split())}" for m in ex["messages"]).encode()).digest()
    if key in seen:
        return False
    seen.add(key)
    return True
before = len(ds)
ds = ds.filter(unique)
exact = before - len(ds)
lsh = MinHashLSH(threshold=0.8, num_perm=128)
keep = []
for i, ex in enumerate(ds):
    words = " ".join(m["content"] for m in ex["messages"]).lower().split()
    shingles = [" ".join(words[j:j + 5]).encode() for j in range(max(1, len(words) - 4))]
    m = MinHash(num_perm=128)
    m.update_batch(shingles)
    if lsh.query(m):
        continue
    lsh.insert(i, m)
    keep.append(i)
near = len(ds) - len(keep)
ds = ds.select(keep)
ds.to_json(dst, lines=True, force_ascii=False)
print(json.dumps({"kept": len(ds), "empty_response": empty, "exact_duplicate": exact, "near_duplicate": near}))
'''


def generate(path: Path, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    vocab = [f"{rng.choice('bcdfghjklmnpqrstvwz')}{rng.choice('aeiou')}{rng.choice('bcdfglmnprst')}{i}" for i in range(5000)]
    made: list[dict] = []
    counts = {"exact": 0, "near": 0, "empty": 0}
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            r = rng.random()
            if made and r < 0.04:
                src = rng.choice(made)
                msgs = [dict(m) for m in src["messages"]]
                if rng.random() < 0.5:  # same text, different case and spacing: still an exact duplicate
                    msgs[0]["content"] = "  " + msgs[0]["content"].upper().replace(" ", "  ")
                counts["exact"] += 1
            elif made and r < 0.10:
                src = rng.choice(made)
                msgs = [dict(m) for m in src["messages"]]
                words = msgs[0]["content"].split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                msgs[0]["content"] = " ".join(words)
                counts["near"] += 1
            else:
                q = " ".join(rng.choice(vocab) for _ in range(rng.randint(25, 45))) + "?"
                a = " ".join(rng.choice(vocab) for _ in range(rng.randint(20, 40))) + "."
                if r > 0.995:
                    a = " "
                    counts["empty"] += 1
                msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                if len(made) < 20000:
                    made.append({"messages": msgs})
                else:
                    made[rng.randrange(len(made))] = {"messages": msgs}
            fh.write(json.dumps({"messages": msgs}) + "\n")
    return counts


def run_system(name: str, argv: list[str]) -> dict:
    # resource.getrusage(RUSAGE_CHILDREN) is the max over all children so far, so each system runs
    # under a tiny wrapper that reports its own child's peak.
    wrapper = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(json.dumps({'rc': p.returncode, 'wall': time.perf_counter() - t, "
               "'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'out': p.stdout, 'err': p.stderr[-3000:]}))")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([PY, "-c", wrapper, *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: wrapper failed:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout)
    if info["rc"] != 0:
        raise SystemExit(f"{name} failed ({info['rc']}):\n{info['err']}")
    return {"system": name, "wall_s": round(info["wall"], 1), "peak_rss_mib": round(info["rss_kib"] / 1024),
            "out": info["out"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-tokens", action="store_true", help="leave out the run with --max-tokens")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    data = OUT / "input.jsonl"
    print(f"generating {args.n} examples ...", flush=True)
    made = generate(data, args.n, args.seed)

    tunesmith = [PY, "-m", "tunesmith", "data", "clean", str(data)]
    systems = [("tunesmith", tunesmith + ["-o", str(OUT / "tunesmith.jsonl"), "--json"])]
    if not args.skip_tokens:
        systems.append(("tunesmith+tokens", tunesmith + ["-o", str(OUT / "tunesmith_tokens.jsonl"), "--max-tokens", "512", "--json"]))
    systems.append(("datasets+datasketch", [PY, "-c", REFERENCE, str(data), str(OUT / "reference.jsonl")]))

    rows = []
    for name, argv in systems:
        print(f"running {name} ...", flush=True)
        r = run_system(name, argv)
        out = json.loads(r.pop("out").strip().splitlines()[-1] if name.startswith("datasets") else r.pop("out"))
        removed = out.get("removed", out)
        r.update(examples_per_s=round(args.n / r["wall_s"]), kept=out["kept"],
                 exact=removed.get("exact_duplicate", 0), near=removed.get("near_duplicate", 0),
                 empty=removed.get("empty_response", 0))
        rows.append(r)

    ref = rows[-1]
    header = "| system | wall s | peak RSS MiB | examples/s | kept | exact dups | near dups | empty | speed vs reference | RSS vs reference |"
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['system']} | {r['wall_s']} | {r['peak_rss_mib']} | {r['examples_per_s']} | {r['kept']} | {r['exact']} | "
                     f"{r['near']} | {r['empty']} | {ref['wall_s'] / r['wall_s']:.2f}x | {r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x |")
    table = "\n".join(lines)
    cpu = os.cpu_count()
    note = (f"{args.n} examples (generated: {made['exact']} exact copies, {made['near']} one-word edits, {made['empty']} empty "
            f"answers), seed {args.seed}, {cpu} CPUs, OMP_NUM_THREADS=1.\n"
            f"Command: nice -n 10 .venv/bin/python bench/data_clean.py --n {args.n} --seed {args.seed}")
    print("\n" + table + "\n\n" + note)
    (OUT.parent / "data_clean.md").write_text(table + "\n\n" + note + "\n", encoding="utf-8")
    (OUT.parent / "data_clean.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "generated": made, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
