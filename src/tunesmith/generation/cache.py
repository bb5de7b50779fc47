"""Forward passes with a KV cache, through whichever API this transformers release has, and the
engine's preallocated cache.

transformers 5 renamed the forward argument `past_key_values` to `cache` and warns (FutureWarning)
on the old name; 4.x only knows the old one. `ModelCall` reads the model's signature once and
passes the cache under the name it takes, so users never see a library warning from our decoding.

transformers' `DynamicCache` concatenates each step's keys and values onto the whole cache, copying
every layer's cache once per token (quadratic in the reply's length). The engine's running batch
keeps its cache in `SlabLayer`s instead: a buffer with spare columns that a step writes into.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicLayer

GROW_MIN = 64     # spare columns a slab gets at least when it is (re)allocated


def plain_layer(layer) -> bool:
    """Whether a cache layer keeps every column it was given (not a sliding window)."""
    return type(layer) in (DynamicLayer, SlabLayer)


def slab_cache(parts: list, width: int, extra: int = 0):
    """One cache for the rows of several caches stacked on the batch axis, each right-aligned to
    `width` columns (zeros on the left: masked padding), in slabs with spare columns for later steps.
    None when a cache has layers that are not plain growing ones (sliding windows ...): the caller
    concatenates those instead."""
    from transformers import DynamicCache

    if not all(plain_layer(layer) for cache in parts for layer in cache.layers):
        return None
    cache = DynamicCache()
    cache.layers = [SlabLayer.stack([c.layers[i] for c in parts], width, extra) for i in range(len(parts[0].layers))]
    return cache


def new_cache(model):
    """An empty DynamicCache sized for `model`'s layers."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:          # transformers 4.x: no config argument; layers are created on first use
        return DynamicCache()


class ModelCall:
    """`model`'s forward with a cache that is updated in place: `logits = call(cache, input_ids=...)`.

    `cache=None` runs without one (a single scoring pass)."""

    def __init__(self, model):
        self.model = model
        # A peft model's forward hides the base's arguments behind **kwargs and passes them on.
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(inner.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _cache(self, cache) -> dict:
        return {self.cache_arg: cache, "use_cache": True} if cache is not None else {"use_cache": False}

    def __call__(self, cache, **inputs) -> torch.Tensor:
        """logits (B, T, V) of every position fed."""
        return self.model(**inputs, **self._cache(cache)).logits

    def tail_logits(self, cache, keep: int, **inputs) -> torch.Tensor:
        """logits (B, keep, V) of the last `keep` positions (speculative verification)."""
        extra = {"logits_to_keep": keep} if self.keep_last else {}
        return self.model(**inputs, **self._cache(cache), **extra).logits[:, -keep:]

    def last_logits(self, cache, **inputs) -> torch.Tensor:
        """logits (B, V) of the last position only (the model skips the vocabulary projection of the others)."""
        return self.model(**inputs, **self._cache(cache), **self.keep_last).logits[:, -1]


class SlabLayer(DynamicLayer):
    """One layer's keys and values, (B, heads, capacity, head_dim) buffers of which columns
    [start, end) are live; `keys` / `values` are views of those, as transformers reads them. A step
    writes its columns in place; the buffers grow by half when full (amortised O(1) per token)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, start: int, end: int):
        super().__init__()
        self.k, self.v, self.start, self.end = k, v, start, end
        self.device = k.device
        self.is_initialized = True
        self._view()

    @classmethod
    def stack(cls, layers: list, width: int, extra: int = 0) -> SlabLayer:
        """Rows of `layers` (each with keys (b_i, H, t_i, D)) right-aligned into one zeroed slab of `width` live columns."""
        keys = [layer.keys for layer in layers]
        rows = sum(k.shape[0] for k in keys)
        _, heads, _, dim = keys[0].shape
        capacity = width + max(GROW_MIN, width // 2, extra)
        k = keys[0].new_zeros(rows, heads, capacity, dim)
        v = keys[0].new_zeros(rows, heads, capacity, dim)
        r = 0
        for layer in layers:
            b, t = layer.keys.shape[0], layer.keys.shape[2]
            k[r:r + b, :, width - t:width] = layer.keys
            v[r:r + b, :, width - t:width] = layer.values
            r += b
        return cls(k, v, 0, width)

    def _view(self) -> None:
        self.keys = self.k[:, :, self.start:self.end]
        self.values = self.v[:, :, self.start:self.end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[-2]
        if self.end + t > self.k.shape[2]:
            live = self.end - self.start
            capacity = live + t + max(GROW_MIN, live // 2)
            k = self.k.new_empty(self.k.shape[0], self.k.shape[1], capacity, self.k.shape[3])
            v = self.v.new_empty(k.shape)
            k[:, :, :live] = self.keys
            v[:, :, :live] = self.values
            self.k, self.v, self.start, self.end = k, v, 0, live
        self.k[:, :, self.end:self.end + t] = key_states
        self.v[:, :, self.end:self.end + t] = value_states
        self.end += t
        self._view()
        return self.keys, self.values

    def select(self, index: torch.Tensor | None, cut: int) -> None:
        """Keep rows `index` (None: all) and drop the `cut` leftmost live columns (padding for every row left)."""
        if index is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
        self.start += cut
        self._view()
