"""Packing: several examples per row, no attention across them.

Rows are filled first-fit-decreasing. Each example's `position_ids` restart at 0; transformers
turns restarting positions (with no attention_mask and no KV cache: call the model with
use_cache=False) into a block-diagonal causal mask, so every example inside a row sees only itself. Padding at the end of a row is one more segment whose
targets are all ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.tokenize import IGNORE, Tokenized


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` (an item longer than it gets its own bin).

    Longest first, each into the lowest-numbered bin with room. A max-tree over the bins' free
    space finds that bin in O(log bins), so packing a whole dataset stays fast (the plain scan
    is O(items x bins)).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    free = [-1] * (2 * size)  # leaves size..2*size-1 are bins; -1 marks a bin not opened yet
    bins: list[list[int]] = []
    for i in order:
        need = lengths[i]
        if bins and free[1] >= need:
            node = 1
            while node < size:  # descend to the leftmost leaf with enough room
                node = 2 * node if free[2 * node] >= need else 2 * node + 1
            b = node - size
        else:
            b, node = len(bins), len(bins) + size
            bins.append([])
            free[node] = capacity
        bins[b].append(i)
        free[node] = max(free[node] - need, 0)
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


@dataclass
class PackPlan:
    rows: int
    examples: int
    real_tokens: int
    max_len: int

    @property
    def efficiency(self) -> float:
        """Real tokens / row tokens when every row is max_len wide: the share of compute not spent on padding."""
        return self.real_tokens / max(1, self.rows * self.max_len)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "examples": self.examples, "real_tokens": self.real_tokens,
                "max_len": self.max_len, "efficiency": round(self.efficiency, 4)}


def pack_plan(lengths: list[int], max_len: int) -> PackPlan:
    """How examples of these lengths (each <= max_len) pack into rows of max_len."""
    fitting = [n for n in lengths if n <= max_len]
    return PackPlan(len(first_fit_decreasing(fitting, max_len)), len(fitting), sum(fitting), max_len)


@dataclass
class Batch:
    input_ids: torch.Tensor     # (R, L)
    targets: torch.Tensor       # (R, L) next-token targets, IGNORE where no loss
    position_ids: torch.Tensor  # (R, L) restarting at each example
    n_examples: int
    real_tokens: int

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def efficiency(self) -> float:
        return self.real_tokens / max(1, self.input_ids.numel())


# Below this share of real tokens in first-fit-decreasing rows, one padding-free row is faster
# (measured on the CPU: quickstart rows at 96 % are ~5 % faster as rows; bench rows at ~55 % are
# ~30 % faster flat, since every padding token costs a full pass through the model).
FLAT_BELOW = 0.9


def collate(examples: list[Tokenized], *, pack: bool, max_len: int, pad_id: int, flat: bool | None = False) -> Batch:
    """Rows of examples, padded to the widest row. `pack`: first-fit-decreasing rows of `max_len`.
    With `pack`, `flat=True` puts every example in one row with no padding at all (cheap only with
    attention that chunks rows by example, train/attention.py); `flat=None` does so when the rows
    would hold less than FLAT_BELOW real tokens."""
    lengths = [len(e) for e in examples]
    rows = first_fit_decreasing(lengths, max_len) if pack else [[i] for i in range(len(examples))]
    if pack and flat is not False and len(rows) > 1:
        width = max(sum(lengths[i] for i in row) for row in rows)
        if flat or sum(lengths) < FLAT_BELOW * width * len(rows):
            rows = [list(range(len(examples)))]
    width = max(sum(len(examples[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ex = examples[i]
            n = len(ex)
            ids[r, at:at + n] = torch.tensor(ex.input_ids)
            tgt[r, at:at + n] = torch.tensor(ex.targets)
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
    real = sum(len(e) for e in examples)
    return Batch(ids, tgt, pos, len(examples), real)
