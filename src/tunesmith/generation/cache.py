"""Forward passes with a KV cache, through whichever API this transformers release has.

transformers 5 renamed the forward argument `past_key_values` to `cache` and warns (FutureWarning)
on the old name; 4.x only knows the old one. `ModelCall` reads the model's signature once and
passes the cache under the name it takes, so users never see a library warning from our decoding.
"""

from __future__ import annotations

import inspect

import torch


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
        params = inspect.signature(model.forward).parameters
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
