"""Next-token choice per row: greedy, or temperature + top-p with the row's own generator."""

from __future__ import annotations

import torch


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p (always at least one)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    sorted_p = torch.where(mass_before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def choose_tokens(logits: torch.Tensor, rows) -> list[int]:
    """logits (batch, vocab) -> one token id per row."""
    chosen = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        if row.temperature > 0:
            probs = torch.softmax(logits[i].float() / row.temperature, dim=-1)
            probs = top_p_filter(probs, row.top_p)
            chosen[i] = int(torch.multinomial(probs.cpu(), 1, generator=row.generator))
    return chosen
