"""Forward passes with a KV cache, through whichever API this transformers release has, and the
engine's preallocated cache.

transformers 5 renamed the forward argument `past_key_values` to `cache` and warns (FutureWarning)
on the old name; 4.x only knows the old one. `ModelCall` reads the model's signature once and
passes the cache under the name it takes, so users never see a library warning from our decoding.

transformers' `DynamicCache` concatenates each step's keys and values onto the whole cache, copying
every layer's cache once per token (quadratic in the reply's length). The engine's running batch
keeps its cache in `SlabLayer`s instead: buffers with spare columns that a step writes into, and spare
rows that joining requests take in place.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicLayer

from tunesmith.generation.attention import grouped_sdpa
from tunesmith.generation.decode_step import DecodeStep
from tunesmith.generation.vocab_head import fast_vocab_head, plain_head
from tunesmith.models.attention_switch import attention_configs

GROW_MIN = 64     # spare columns a slab gets at least when it is (re)allocated


def plain_layer(layer) -> bool:
    """Whether a cache layer keeps every column it was given (not a sliding window)."""
    return type(layer) in (DynamicLayer, SlabLayer)


def slab_cache(parts: list, width: int, row_room: int = 0):
    """One cache for the rows of several caches stacked on the batch axis, each right-aligned to
    `width` columns (zeros on the left: masked padding), in slabs with spare columns for later steps
    and room for `row_room` rows. None when a cache has layers that are not plain growing ones
    (sliding windows ...): the caller concatenates those instead."""
    from transformers import DynamicCache

    if not all(plain_layer(layer) for cache in parts for layer in cache.layers):
        return None
    cache = DynamicCache()
    cache.layers = [SlabLayer.stack([c.layers[i] for c in parts], width, row_room)
                    for i in range(len(parts[0].layers))]
    return cache


def append_in_place(cache, more, width: int, extra: int) -> bool:
    """Add the rows of cache `more` (right-aligned to `width` columns) to slab cache `cache` in place,
    leaving `extra` spare columns; False (nothing changed) when `cache` has no room or is not all slabs."""
    layers = cache.layers
    rows = more.layers[0].keys.shape[0] if more.layers else 0
    if not (layers and all(type(layer) is SlabLayer for layer in layers)
            and all(plain_layer(layer) for layer in more.layers)
            and all(layer.room_for(rows, width, extra) for layer in layers)):
        return False
    for layer, new in zip(layers, more.layers):
        layer.append([new], width)
    return True


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
        self.keeps_logits = "logits_to_keep" in params    # projects only the last positions asked for
        self.configs = attention_configs(model)     # run with generation's grouped SDPA (attention.py)
        self.head = plain_head(model)               # projected in fp32 by vocab_head.py
        self.step = DecodeStep.of(inner)            # cached passes without transformers' glue (decode_step.py)

    def _run(self, cache, inputs: dict, extra: dict) -> torch.Tensor:
        use = {self.cache_arg: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        with grouped_sdpa(self.configs), fast_vocab_head(self.head):
            return self.model(**inputs, **use, **extra).logits

    def __call__(self, cache, **inputs) -> torch.Tensor:
        """logits (B, T, V) of every position fed."""
        return self._run(cache, inputs, {})

    def tail_logits(self, cache, keep: int, **inputs) -> torch.Tensor:
        """logits (B, keep, V) of the last `keep` positions (speculative verification): through the glue-free
        step where it applies, else the model's forward projecting those positions only."""
        if self.step is not None and self.step.applies(cache, **inputs):
            with grouped_sdpa(self.configs), fast_vocab_head(self.head):
                return self.step(cache, **inputs, keep=keep)
        extra = {"logits_to_keep": keep} if self.keeps_logits else {}
        return self._run(cache, inputs, extra)[:, -keep:]

    def last_logits(self, cache, **inputs) -> torch.Tensor:
        """logits (B, V) of the last position only (the vocabulary projection of the others is skipped)."""
        return self.tail_logits(cache, 1, **inputs)[:, -1]


class SlabLayer(DynamicLayer):
    """One layer's keys and values: (R, heads, capacity, head_dim) buffers of which the first `rows` rows
    and columns [start, end) are live; `keys` / `values` are views of those, as transformers reads them.
    A step writes its columns in place; the buffers grow by half when full (amortised O(1) per token).
    Rows join in place while there is room (`room_for`, `append`) and leave by moving the last rows into
    the holes (`keep`), so a running batch reallocates its cache rarely: fresh buffers are not free on
    CPU (every page is faulted in when first written, which measured 0.5-1.7 GB/s on a 2-core VM).

    The buffers are allocated empty. What is read is always written first: live columns of live rows
    are keys and values, or zeros where a row is padded on the left (masked, but they must be finite
    for the masked softmax). Spare rows and columns are never read, and their pages stay untouched."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, rows: int, start: int, end: int):
        super().__init__()
        self.k, self.v, self.rows, self.start, self.end = k, v, rows, start, end
        self.device = k.device
        self.is_initialized = True
        self._view()

    @classmethod
    def stack(cls, layers: list, width: int, row_room: int = 0) -> SlabLayer:
        """Rows of `layers` (each with keys (b_i, H, t_i, D)) right-aligned into one slab of `width` live
        columns, with room for GROW_MIN or half the width more columns, whichever is more, and `row_room` rows."""
        keys = [layer.keys for layer in layers]
        rows = sum(k.shape[0] for k in keys)
        _, heads, _, dim = keys[0].shape
        capacity = width + max(GROW_MIN, width // 2)
        # Under autocast, rotary embedding leaves keys in fp32 (values stay bf16) and SDPA casts the whole
        # cache to bf16 again in every decode step; holding it in the autocast dtype rounds each key once,
        # to the same value.
        device = keys[0].device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else keys[0].dtype
        k = keys[0].new_empty(max(rows, row_room), heads, capacity, dim, dtype=dtype)
        slab = cls(k, torch.empty_like(k), 0, 0, width)
        slab._put(layers)
        return slab

    def room_for(self, rows: int, width: int, extra: int) -> bool:
        """Whether `rows` rows right-aligned to `width` columns can join in place, leaving `extra` spare columns."""
        return (self.rows + rows <= self.k.shape[0] and self.end - max(width, self.end - self.start) >= 0
                and self.k.shape[2] - self.end >= extra)

    def append(self, layers: list, width: int) -> None:
        """Add the rows of `layers` (each right-aligned to `width` columns); `room_for` said yes."""
        if width > self.end - self.start:      # the running rows get more left padding
            start = self.end - width
            self.k[:self.rows, :, start:self.start] = 0
            self.v[:self.rows, :, start:self.start] = 0
            self.start = start
        self._put(layers)

    def _put(self, layers: list) -> None:
        """Write each layer's rows after the live ones, right-aligned to `end`, zeros on their left."""
        for layer in layers:
            r, b, t = self.rows, layer.keys.shape[0], layer.keys.shape[2]
            split = self.end - t
            for buf, part in ((self.k, layer.keys), (self.v, layer.values)):
                buf[r:r + b, :, self.start:split] = 0
                buf[r:r + b, :, split:self.end] = part
            self.rows += b
        self._view()

    def _view(self) -> None:
        self.keys = self.k[:self.rows, :, self.start:self.end]
        self.values = self.v[:self.rows, :, self.start:self.end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[-2]
        if self.end + t > self.k.shape[2]:
            live = self.end - self.start
            capacity = live + t + max(GROW_MIN, live // 2)
            k = self.k.new_empty(self.k.shape[0], self.k.shape[1], capacity, self.k.shape[3])
            v = self.v.new_empty(k.shape)
            k[:self.rows, :, :live] = self.keys
            v[:self.rows, :, :live] = self.values
            self.k, self.v, self.start, self.end = k, v, 0, live
        self.k[:self.rows, :, self.end:self.end + t] = key_states
        self.v[:self.rows, :, self.end:self.end + t] = value_states
        self.end += t
        self._view()
        return self.keys, self.values

    def keep(self, moves: list[tuple[int, int]], rows: int, cut: int) -> None:
        """Copy row src to row dst for each (src, dst) of `moves`, keep the first `rows` rows, and drop the
        `cut` leftmost live columns (padding for every row left)."""
        for src, dst in moves:
            self.k[dst, :, self.start:self.end] = self.k[src, :, self.start:self.end]
            self.v[dst, :, self.start:self.end] = self.v[src, :, self.start:self.end]
        self.rows = rows
        self.start += cut
        self._view()
