"""`data inspect`: what is in a data file, measured with the model's own tokenizer and chat template."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.data.dedup import NearDupIndex, NearDupParams, exact_digest
from tunesmith.data.load import Scan, empty_file_problem
from tunesmith.data.packing import pack_plan
from tunesmith.data.schema import Sample

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Inspection:
    file: str
    format: str | None
    records: int = 0
    valid: int = 0
    errors: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    roles: dict[str, int] = field(default_factory=dict)
    turns: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    max_len: int = 0                   # the limit counted against (data.max_len: auto resolved to a number)
    max_len_setting: int | str = 0     # as asked: a number, or "auto"
    over_max_len: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    packing: dict = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "lengths"}


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    out = {"min": int(arr.min()), "mean": round(float(arr.mean()), 1)}
    out.update({f"p{p}": int(np.percentile(arr, p, method="inverted_cdf")) for p in PERCENTILES})
    out["max"] = int(arr.max())
    return out


def inspect_file(path: str | Path, tokenizer=None, *, max_len: int | str = "auto", context: int | None = None,
                 fmt: str = "auto", near: NearDupParams = NearDupParams(), batch_size: int = 2048) -> Inspection:
    """Stream the file once. Duplicates are counted as `clean` would remove them (on unnormalised
    text, so `clean` may find a few more); token lengths are exactly what SFT training tokenizes, and
    like training they include every copy of an exact duplicate (the near-duplicate search sees
    each text once, so a copy is never also counted as a near duplicate). `max_len` "auto" is
    resolved from these lengths as a training run resolves `data.max_len: auto` (capped by `context`)."""
    from tunesmith.data.lengths import resolve_max_len
    from tunesmith.data.tokenize import token_lengths

    scan = Scan(path, fmt)
    result = Inspection(str(path), scan.format, max_len_setting=max_len)
    kinds: Counter = Counter()
    roles: Counter = Counter()
    turns: list[int] = []
    seen: set[bytes] = set()
    index = NearDupIndex(near)
    batch: list[Sample] = []
    first: list[bool] = []     # per batch entry: not an exact copy of an earlier sample

    def flush() -> None:
        if tokenizer is not None:
            result.lengths.extend(token_lengths(tokenizer, batch))
        unique = [s for s, is_first in zip(batch, first) if is_first]
        result.near_duplicates += sum(hit is not None for hit in index.find_duplicates(index.signatures(unique)))
        batch.clear()
        first.clear()

    for item in scan:
        if item.problem is not None:
            result.errors += 1
            if len(result.first_errors) < 10:
                result.first_errors.append(str(item.problem))
            continue
        sample = item.sample
        result.valid += 1
        kinds[sample.kind] += 1
        roles.update(m["role"] for m in sample.messages)
        if sample.messages:
            turns.append(len(sample.messages))
        digest = exact_digest(sample)
        is_first = digest not in seen
        if is_first:
            seen.add(digest)
        else:
            result.exact_duplicates += 1
        batch.append(sample)
        first.append(is_first)
        if len(batch) >= batch_size:
            flush()
    flush()
    if scan.records == 0:
        result.errors += 1
        result.first_errors.append(str(empty_file_problem(scan)))
    result.format, result.records = scan.format, scan.records
    result.kinds, result.roles = dict(kinds), dict(roles)
    result.turns = _summary(turns)
    result.max_len = resolve_max_len(max_len, result.lengths, context).resolved
    if result.lengths:
        result.tokens = _summary(result.lengths)
        result.over_max_len = sum(n > result.max_len for n in result.lengths)
        result.packing = pack_plan(result.lengths, result.max_len).as_dict()
    return result


def plot_lengths(result: Inspection, png: str | Path) -> None:
    """Histogram of token lengths with the max_len cut, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunesmith.io_utils import atomic_file

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(result.lengths, bins=min(60, max(10, len(set(result.lengths)))), color="#4C72B0")
    label = f"max_len = {result.max_len}" + (" (auto)" if result.max_len_setting == "auto" else "")
    ax.axvline(result.max_len, color="#C44E52", linestyle="--", label=label)
    ax.set_xlabel("tokens per example (chat template applied)")
    ax.set_ylabel("examples")
    ax.set_title(f"{Path(result.file).name}: {len(result.lengths)} examples, {result.over_max_len} over max_len")
    ax.legend()
    fig.tight_layout()
    with atomic_file(png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
