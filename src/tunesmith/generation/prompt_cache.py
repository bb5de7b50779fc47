"""Keys and values of recent prompts, reused by later requests that start the same way.

Served traffic repeats itself at the front: the system prompt every request carries, the same
few-shot demonstrations, the earlier turns of a conversation sent again with one more message.
Prefilling those tokens again is most of a short request's cost on a CPU (a 330-token few-shot
prompt of the default model takes about as long as 14 decode steps). The engine keeps the keys and
values of the prompts it prefilled, per adapter (an adapter changes them), and a later group of
requests whose prompts all start with one of them gets a copy of that prefix and prefills only
the rest, exactly as an offline run's shared prefix does (prefix.py). vLLM calls this automatic
prefix caching; llama.cpp's server keeps its last prompt the same way.

The store is bounded in bytes and forgets the least recently used prompt first. A prompt's own
tokens are matched token by token, so any common beginning counts, not only whole turns; fewer
than `prefix.MIN_SHARED` common tokens are not worth the copy.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from tunesmith.generation.prefix import MIN_SHARED, SharedPrefix, common_length

Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Entry:
    tokens: list[int]
    layers: Layers           # per layer, keys and values (1, heads, len(tokens), head_dim)
    nbytes: int


class PromptCache:
    """The keys and values of recently prefilled prompts, at most `max_bytes` of them."""

    def __init__(self, max_bytes: int, minimum: int = MIN_SHARED):
        self.max_bytes = max_bytes
        self.minimum = minimum
        self.entries: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()   # least recent first
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, adapter: str | None, prompts: list[list[int]]) -> SharedPrefix | None:
        """The longest stored beginning that every prompt starts with and that leaves each prompt one
        token of its own (the pass needs a last position), with its keys and values; None below `minimum`."""
        best, best_n = None, self.minimum - 1
        for key, entry in self.entries.items():
            if key[0] != adapter:
                continue
            n = min(common_length(entry.tokens, p, len(p) - 1) for p in prompts)
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return None
        self.entries.move_to_end(best)
        entry = self.entries[best]
        return SharedPrefix(entry.tokens[:best_n], [(k[:, :, :best_n], v[:, :, :best_n]) for k, v in entry.layers])

    def store(self, adapter: str | None, prompt: list[int], layers: Layers) -> None:
        """Keep `prompt`'s keys and values (per layer (1, heads, len(prompt), head_dim), owned by the caller
        no more); stored prompts it extends are dropped (it covers them)."""
        key = (adapter, tuple(prompt))
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if nbytes > self.max_bytes:
            return
        covered = [k for k in self.entries if k[0] == adapter and common_length(k[1], prompt, len(k[1])) == len(k[1])]
        for k in covered:
            self._drop(k)
        while self.entries and self.nbytes + nbytes > self.max_bytes:
            self._drop(next(iter(self.entries)))
        self.entries[key] = _Entry(list(prompt), layers, nbytes)
        self.nbytes += nbytes

    def forget(self, adapter: str | None) -> None:
        """Drop every prompt of `adapter` (its weights are gone or about to change)."""
        for key in [k for k in self.entries if k[0] == adapter]:
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        self.nbytes -= self.entries.pop(key).nbytes
