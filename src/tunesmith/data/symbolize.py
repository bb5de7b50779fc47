"""Symbol tuning (Wei et al. 2023, "Symbol tuning improves in-context learning in language models").

Classification examples become few-shot prompts in which the natural-language labels are replaced
by arbitrary symbols ("foo", "7", "XQ" ...), drawn afresh for every prompt. Nothing in the prompt
says what the task is, so the only way to answer is to read the input-label mapping from the
in-context examples: training on this strengthens in-context learning. Every prompt shows each
label it uses at least once, the query's label among them, so each answer is recoverable.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from tunesmith.data.load import load_samples
from tunesmith.data.writers import check_output, open_writer
from tunesmith.errors import DataError

# Arbitrary symbols, as in the paper: words with no label meaning, numbers, letter strings.
SYMBOLS = ["foo", "bar", "zork", "blip", "quux", "wibble", "plonk", "mep", "tove", "snark", "glorp", "vex",
           "0", "1", "7", "13", "42", "99", "305", "A", "B", "Q", "XQ", "KT", "ZZ", "RJ", "ab", "mo", "tup", "dax"]
MAX_LABELS = 20


def _pairs(samples) -> list[tuple[str, str]]:
    out = []
    for s in samples:
        if s.kind != "chat":
            raise DataError(f"{s.source}: symbolize needs chat or instruction/answer examples, got {s.kind}")
        user = [m["content"] for m in s.messages if m["role"] == "user"][-1]
        out.append((user.strip(), s.reference().strip()))
    return out


def symbolize(pairs: list[tuple[str, str]], n: int, k: int, seed: int, source: str = "data") -> list[dict]:
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(pairs):
        by_label[label].append(i)
    labels = sorted(by_label)
    if len(labels) < 2:
        raise DataError(f"{source}: every example has the same answer; symbol tuning needs a classification task "
                        "with at least 2 labels")
    if len(labels) > min(MAX_LABELS, len(pairs) // 2):
        raise DataError(f"{source}: {len(labels)} distinct answers in {len(pairs)} examples: this does not look like "
                        f"classification data (symbolize takes at most {MAX_LABELS} labels, each used more than once)",
                        hint="the answers must be class labels (e.g. positive / negative)")
    if k < 2:
        raise DataError("--k must be at least 2 (one example per label at least)")
    rng = random.Random(seed)
    rows = []
    for j in range(n):
        query = rng.randrange(len(pairs))
        # Labels in this prompt: the query's plus others, at most k; each shown at least once.
        others = [lab for lab in labels if lab != pairs[query][1]]
        used = [pairs[query][1], *rng.sample(others, min(len(others), max(1, min(k, len(labels)) - 1)))]
        shots = [rng.choice([i for i in by_label[lab] if i != query] or by_label[lab]) for lab in used]
        pool = [i for i in range(len(pairs)) if i != query and pairs[i][1] in used and i not in shots]
        shots += rng.sample(pool, min(len(pool), max(0, k - len(shots))))
        rng.shuffle(shots)
        symbols = dict(zip(used, rng.sample(SYMBOLS, len(used))))
        body = "\n\n".join(f"Input: {pairs[i][0]}\nOutput: {symbols[pairs[i][1]]}" for i in shots)
        prompt = f"{body}\n\nInput: {pairs[query][0]}\nOutput:"
        rows.append({"id": f"symbol-{j:05d}", "messages": [{"role": "user", "content": prompt},
                                                          {"role": "assistant", "content": symbols[pairs[query][1]]}],
                     "provenance": {"mode": "symbolize", "query": query, "shots": shots, "symbols": symbols}})
    return rows


def symbolize_file(path: str | Path, output: str | Path, *, n: int, k: int, seed: int = 0, fmt: str = "auto") -> dict:
    output = check_output(output)
    pairs = _pairs(load_samples(path, fmt))
    rows = symbolize(pairs, n, k, seed, str(path))
    with open_writer(output) as write:
        for row in rows:
            write(row)
    return {"examples": len(pairs), "labels": len({lab for _, lab in pairs}), "written": len(rows), "output": str(output)}
