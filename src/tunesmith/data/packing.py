"""Packing: several examples per row, no attention across them.

Rows are filled first-fit-decreasing. Each example's `position_ids` restart at 0; transformers
turns restarting positions (with no attention_mask) into a block-diagonal causal mask, so every
example inside a row sees only itself. Padding at the end of a row is one more segment whose
targets are all ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.tokenize import IGNORE, Tokenized


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` (an item longer than it gets its own bin)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


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


def collate(examples: list[Tokenized], *, pack: bool, max_len: int, pad_id: int) -> Batch:
    rows = first_fit_decreasing([len(e) for e in examples], max_len) if pack else [[i] for i in range(len(examples))]
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
