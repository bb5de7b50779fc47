"""Decoding for peft's prompt-learning adapters (prompt tuning, p-tuning, prefix tuning).

These do not go through `model.generate`: peft's `prepare_inputs_for_generation` looks for the
cache under `past_key_values`, which transformers 5 renamed to `cache`, so it re-inserts the virtual
tokens at every step (prompt tuning) or builds a prefix cache the model ignores (prefix tuning); it
also drops `position_ids` for prompt tuning, so left padding shifts every real position.
`VirtualTokenDecoder` is a KV-cached loop on the base model instead: the virtual tokens sit at
positions 0..n-1 and the i-th real token at n+i in every row, as in training.
"""

from __future__ import annotations

import torch

from tunesmith.errors import UserError
from tunesmith.generation.batching import positions
from tunesmith.generation.cache import ModelCall, new_cache

_EMBEDDING_PROMPTS = frozenset({"PROMPT_TUNING", "P_TUNING"})   # virtual input embeddings
_KV_PREFIXES = frozenset({"PREFIX_TUNING"})                       # virtual keys/values in every layer


def virtual_token_kind(model) -> str | None:
    """How a peft prompt-learning adapter adds its virtual tokens ("embeddings" or "kv"); None for any
    other model, which `model.generate` handles. An unsupported prompt-learning type is a UserError."""
    config = getattr(model, "active_peft_config", None)
    # Inside peft's `disable_adapter()` (the base-model baselines) the model is the plain base.
    if config is None or not config.is_prompt_learning or getattr(model, "_adapters_disabled", False):
        return None
    kind = getattr(config.peft_type, "value", config.peft_type)
    if kind in _KV_PREFIXES:
        return "kv"
    if kind in _EMBEDDING_PROMPTS:
        return "embeddings"
    raise UserError(f"cannot generate with a peft {kind} adapter: peft's generate places its virtual tokens wrongly",
                    hint="evaluate prompt, p-tuning or prefix tuning adapters, or train this model with another method")


class VirtualPrefill:
    """The first forward pass of a peft prompt-learning model, run on its base model: virtual tokens at
    positions 0..n-1 and the i-th real token at n+i in every row, as in training. Later steps need
    nothing special (positions count the mask's ones, which include the n virtual tokens)."""

    def __init__(self, model, kind: str):
        self.model = model
        self.kind = kind
        self.base = model.get_base_model()

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[object, dict, torch.Tensor]:
        """ids, mask (B, T) left-padded -> (cache, forward inputs, mask (B, n + T) of the cache)."""
        from transformers import DynamicCache

        batch = ids.shape[0]
        if self.kind == "kv":
            cache = self.model.get_prompt(batch_size=batch)
            if not isinstance(cache, DynamicCache):
                cache = DynamicCache(cache)
            n = cache.get_seq_length()
            inputs = {"input_ids": ids}
        else:
            embeds = self.model.get_input_embeddings()(ids)                        # (B, T, H)
            prompts = self.model.get_prompt(batch_size=batch).to(embeds.dtype)    # (B, n, H)
            n = prompts.shape[1]
            cache = new_cache(self.base)
            inputs = {"inputs_embeds": torch.cat((prompts, embeds), dim=1)}
        # Real tokens count from n in each row whatever its padding; pads get any position, being masked.
        real = positions(mask, n)                                                # (B, T)
        virtual = torch.arange(n, device=ids.device).expand(batch, n)             # (B, n)
        position_ids = real if self.kind == "kv" else torch.cat((virtual, real), dim=1)
        attn = torch.cat((torch.ones((batch, n), dtype=mask.dtype, device=mask.device), mask), dim=1)
        return cache, {"attention_mask": attn, "position_ids": position_ids, **inputs}, attn


class VirtualTokenDecoder:
    """Greedy or sampled decoding for a peft prompt-learning model, one KV cache per batch, in lockstep
    (the server's peft fallback; offline generation runs these models through the engine).

    `on_step(tokens)`, if given, sees each step's new token per row and may return a bool mask of
    rows to stop (the server streams and cancels rows through it)."""

    def __init__(self, model, kind: str):
        self.prefill = VirtualPrefill(model, kind)
        self.call = ModelCall(self.prefill.base)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, stops: list[int], pad: int,
                 pick, on_step=None) -> torch.Tensor:
        """ids, mask (B, T) left-padded -> new tokens (B, N), N <= max_new_tokens, `pad` after a row stops."""
        batch = ids.shape[0]
        cache, inputs, attn = self.prefill(ids, mask)
        logits = self.call.last_logits(cache, **inputs)
        stop = torch.tensor(stops, device=ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        new = []
        for step in range(max_new_tokens):
            token = pick(logits.float()).masked_fill(done, pad)                  # (B,)
            new.append(token)
            done |= torch.isin(token, stop)
            if on_step is not None and (stopped := on_step(token)) is not None:
                done |= stopped.to(done.device)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            position_ids = attn.sum(dim=1, keepdim=True)                          # (B, 1): n + real tokens so far
            attn = torch.cat((attn, torch.ones((batch, 1), dtype=attn.dtype, device=attn.device)), dim=1)
            logits = self.call.last_logits(cache, input_ids=token[:, None], attention_mask=attn, position_ids=position_ids)
        return torch.stack(new, dim=1) if new else ids.new_zeros((batch, 0))


class PlainPrefill:
    """The first forward pass of any other model: left-padded ids, positions counting real tokens."""

    def __init__(self, model):
        self.base = model

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[object, dict, torch.Tensor]:
        return new_cache(self.base), {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}, mask


def prefill_for(model):
    """How the engine starts rows of `model`: `(ids, mask) -> (cache, inputs, mask)`, with `.base` the
    module the forward passes run on."""
    kind = virtual_token_kind(model)
    return VirtualPrefill(model, kind) if kind else PlainPrefill(model)
