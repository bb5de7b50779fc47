"""Perplexity with a strided sliding window: raw text on every token, chat data on the response only.

A text longer than the window is scored in windows of `window` tokens that start `stride` tokens
apart. Each token is scored exactly once, in the first window that reaches it, so every window but
the first gives its scored tokens `window - stride` tokens of left context; a smaller stride means
more context per token and more compute. Perplexity is exp(total NLL / scored tokens) over the set.

The tokens are the ones training sees (`tokenize_sample`): raw text plus its end-of-sequence token,
chat rendered through the template with only assistant tokens scored, so a response perplexity is
directly comparable to the training loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tunesmith.data.schema import Sample
from tunesmith.data.tokenize import IGNORE, tokenize_sample
from tunesmith.errors import ConfigError
from tunesmith.train.precision import inference_precision


@dataclass
class PerplexityResult:
    rows: list[tuple[float, int]]   # (summed NLL in nats, scored tokens) per sample

    @property
    def tokens(self) -> int:
        return sum(c for _, c in self.rows)

    @property
    def mean_nll(self) -> float:
        return fold_nll(self.rows)

    @property
    def perplexity(self) -> float:
        return fold_perplexity(self.rows)


def fold_nll(rows: list[tuple[float, int]]) -> float:
    count = sum(c for _, c in rows)
    return sum(s for s, _ in rows) / count if count else float("nan")


def fold_perplexity(rows: list[tuple[float, int]]) -> float:
    return math.exp(fold_nll(rows))


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) for each window over a sequence of n tokens.

    Position t is a target predicted from positions < t; position 0 has no context and is never
    scored, nor is a window's own first position (its context lies outside the window).
    """
    if window < 2:
        raise ConfigError(f"perplexity window must be at least 2 tokens, got {window}")
    if not 0 < stride <= window:
        raise ConfigError(f"perplexity stride must be between 1 and the window ({window}), got {stride}",
                          hint="a stride larger than the window would skip tokens")
    out, prev_end, begin = [], 0, 0
    while prev_end < n:
        end = min(begin + window, n)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        begin += stride
    return out


@torch.no_grad()
def sequence_nll(model, items: list[tuple[list[int], list[bool]]], *, window: int, stride: int,
                 batch_size: int = 4, precision: str = "fp32") -> list[tuple[float, int]]:
    """Summed NLL and scored-token count per (ids, scored) item; `scored[t]` marks target positions."""
    device = next(model.parameters()).device
    # Flatten every item's windows into one work list, so windows of different items share batches.
    work = []
    for k, (ids, scored) in enumerate(items):
        for begin, end, first in windows(len(ids), window, stride):
            mask = [scored[t] and t >= first for t in range(begin, end)]
            if any(mask):
                work.append((k, ids[begin:end], mask))
    # Longest first keeps right padding small within each batch.
    work.sort(key=lambda w: -len(w[1]))
    totals = [[0.0, 0] for _ in items]
    was_training = model.training
    model.eval()
    try:
        with inference_precision(model, precision):
            for start in range(0, len(work), batch_size):
                chunk = work[start:start + batch_size]
                width = max(len(w[1]) for w in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                attn = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, (_, seq, _) in enumerate(chunk):
                    ids[r, :len(seq)] = torch.tensor(seq)
                    attn[r, :len(seq)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
                # Prompt tuning prepends its virtual tokens' logits; the last `width` positions are the input's.
                logits = logits[:, -width:]
                for r, (k, seq, mask) in enumerate(chunk):
                    # Row by row: a (width, vocab) log-softmax at a time instead of the whole batch's.
                    pos = torch.tensor([t for t in range(1, len(seq)) if mask[t]], device=device)
                    logp = torch.log_softmax(logits[r, pos - 1].float(), dim=-1)
                    nll = -logp.gather(1, ids[r, pos].to(device).unsqueeze(1)).sum().item()
                    totals[k][0] += nll
                    totals[k][1] += len(pos)
                del logits
    finally:
        model.train(was_training)
    return [(s, c) for s, c in totals]


def sample_items(tokenizer, samples: list[Sample], system_prompt: str | None = None) -> list[tuple[list[int], list[bool]]]:
    """Token ids and scored positions: every token of raw text, assistant tokens of chats."""
    items = []
    for s in samples:
        ids, labels = tokenize_sample(tokenizer, s, system_prompt=system_prompt)
        items.append((ids, [lab != IGNORE for lab in labels]))
    return items


def perplexity(model, tokenizer, samples: list[Sample], *, window: int = 512, stride: int = 256, batch_size: int = 4,
               system_prompt: str | None = None, precision: str = "fp32") -> PerplexityResult:
    items = sample_items(tokenizer, samples, system_prompt)
    return PerplexityResult(sequence_nll(model, items, window=window, stride=stride, batch_size=batch_size,
                                         precision=precision))
