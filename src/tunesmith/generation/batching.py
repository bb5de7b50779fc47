"""Left-padded batches: the one place that turns token-id lists into model inputs.

Prompts are padded on the left so every row's next token lands in the last column, which is what a
decoder appends to. Positions count real tokens only, so a padded row sees exactly the positions it
would see alone (greedy answers do not depend on what shares the batch).
"""

from __future__ import annotations

import torch


def pad_id(tokenizer) -> int:
    """The id padding columns hold: the tokenizer's pad token, else its eos (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(sequences: list[list[int]], pad: int, device: torch.device | str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T) long with T the longest sequence; mask is 1 on real tokens."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def positions(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """(B, T) position ids that count real tokens from `offset`; padding gets any (masked) position."""
    return (offset + mask.cumsum(dim=1) - 1).clamp(min=offset)


def pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` with zeros prepended along `dim` up to `width` (cache and mask splicing)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
