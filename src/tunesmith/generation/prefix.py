"""A prompt prefix shared by every request of an offline run, prefilled once.

A few-shot evaluation sends the same instructions and demonstrations ahead of every held-out
question: on the quickstart that is about 310 of each prompt's 330 tokens, so prefilling every
prompt whole spends most of the prefill on the same tokens again. The engine instead runs the
shared tokens once (batch 1), gives each admitted group a copy of their keys and values, and
prefills only what follows. Rows whose remainders differ in length are left-padded after the
prefix: the padding columns are masked, and positions count the mask's ones, so every token sees
the positions it would see in a whole-prompt prefill.
"""

from __future__ import annotations

import torch

from tunesmith.generation.batching import left_pad, positions

MIN_SHARED = 16      # below this many tokens the extra pass costs about what it saves


def common_prefix(prompts: list[list[int]], minimum: int = MIN_SHARED) -> list[int]:
    """The longest token prefix of all `prompts` that leaves each at least one token of its own;
    [] when it is shorter than `minimum` or there is only one prompt."""
    if len(prompts) < 2:
        return []
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = common_length(first, p, n)
        if n < minimum:
            return []
    return list(first[:n])


def common_length(a, b, limit: int) -> int:
    """How many leading tokens `a` and `b` share, at most `limit`."""
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SharedPrefix:
    """`tokens` every request starts with, and their keys/values (1, heads, P, head_dim) per layer: given
    (a stored prompt's, prompt_cache.py) or computed on first use."""

    def __init__(self, tokens: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.tokens = tokens
        self.layers = layers

    def covers(self, prompts: list[list[int]]) -> bool:
        n = len(self.tokens)
        return bool(n) and all(len(p) > n and p[:n] == self.tokens for p in prompts)

    def inputs(self, call, model, prompts: list[list[int]], pad: int, device) -> tuple[object, dict, torch.Tensor]:
        """(cache holding the prefix for each row, forward inputs of the remainders, mask (B, P + S) of the cache)."""
        from transformers import DynamicCache

        from tunesmith.generation.cache import new_cache

        n = len(self.tokens)
        if self.layers is None:
            cache = new_cache(model)
            ids = torch.tensor([self.tokens], dtype=torch.long, device=device)                 # (1, P)
            call.last_logits(cache, input_ids=ids, attention_mask=torch.ones_like(ids),
                             position_ids=torch.arange(n, device=device)[None])
            self.layers = [(layer.keys, layer.values) for layer in cache.layers]
        batch = len(prompts)
        ids, rest = left_pad([p[n:] for p in prompts], pad, device)                            # (B, S)
        # Expanded views: the cache's first update concatenates them into a fresh tensor per group.
        cache = DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                             for k, v in self.layers])
        mask = torch.cat([rest.new_ones(batch, n), rest], dim=1)                               # (B, P + S)
        return cache, {"input_ids": ids, "attention_mask": mask, "position_ids": positions(rest, n)}, mask
