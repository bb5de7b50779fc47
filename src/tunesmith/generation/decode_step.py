"""A forward pass into a KV cache (a decode step, a speculative verification, a prefill) for Llama-family
models, without transformers' glue.

At batch 1 a bf16 step of the default model (SmolLM2-135M, 30 layers) is ~8 ms of matrix products and as
much again of small eager work; a good part of that is not arithmetic but transformers' model, decoder-layer
and attention forwards: keyword plumbing through four levels, decorators, output recording, the mask
builder and the attention-function lookup, 30 times over. This runs the same step with that glue written
out once (`bench/generate.py --step`, 2-core AMD EPYC with AVX-512 bf16, two threads, ~100-token context,
ms a step, four runs: batch 1 15.7-16.8 -> 15.0-15.4 in bf16 autocast, 21.6-22.9 -> 20.4-22.1 in fp32;
1.04-1.09x at batch 16).

It computes what transformers computes, in the same order: it calls the model's own modules (so peft
adapters, the serving bank's per-row LoRA, packed weights and autocast all apply as they do), the model's
rotary function, the cache's own `update`, and the attention function the config names, with the mask
transformers builds for SDPA (`causal_mask`), and projects only the positions transformers would
(`logits_to_keep`). The logits are bit for bit transformers' (tests: fp32 and bf16 autocast, padded prefills,
one-token steps, three-token verifications with a short draft, a masked column in the middle, peft LoRA on and
off, each architecture below).

Used for passes that feed tokens by id into a cache whose layers keep every column, for models whose class is
in ARCHITECTURES, with SDPA attention, no sliding window and no hook or patch on the forwards it writes out;
anything else (a pass without a cache, input embeddings, prompt-learning prefills) goes through the model's
forward.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as nn_module

# Attention implementations whose decode-step mask is the boolean padding mask (generation/attention.py's
# grouped SDPA is one: for a one-position query it computes what transformers' SDPA function does given a mask).
SDPA_NAMES = ("sdpa", "tunesmith_gqa_sdpa")


@dataclass(frozen=True)
class Architecture:
    """What a causal LM class's decode step is made of: its decoder layer class, and the sliding window its
    attention passes to the attention function (None: full attention, the only kind this step runs)."""
    layer: str
    sliding_window: Callable[[nn.Module], int | None]


def _no_window(attn: nn.Module) -> None:
    return None


ARCHITECTURES = {
    "LlamaForCausalLM": Architecture("LlamaDecoderLayer", _no_window),
    "MistralForCausalLM": Architecture("MistralDecoderLayer", lambda attn: getattr(attn.config, "sliding_window", None)),
    "Qwen2ForCausalLM": Architecture("Qwen2DecoderLayer", lambda attn: getattr(attn, "sliding_window", None)),
}


def _touched(module: nn.Module) -> bool:
    """Whether something replaced the module's forward on the instance or hooks its calls (bottleneck adapters
    hook attention and MLP blocks): this step skips the forwards of the modules it writes out."""
    return "forward" in module.__dict__ or bool(module._forward_hooks) or bool(module._forward_pre_hooks)


def _global_hooks() -> bool:
    return bool(nn_module._global_forward_hooks) or bool(nn_module._global_forward_pre_hooks)


class DecodeStep:
    """`step(cache, input_ids, attention_mask, position_ids, keep)` -> logits (B, keep, V) of the last positions
    fed, for the causal LM `model` (not a peft wrapper: the caller unwraps). Build with `DecodeStep.of(model)`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers[: model.config.num_hidden_layers])
        modeling = sys.modules[type(model).__module__]
        self.rotary = modeling.apply_rotary_pos_emb
        self.eager = modeling.eager_attention_forward
        # The modules whose forwards this step writes out; hooks or patches on them are checked at every call,
        # since adapters (bottleneck's hooks) can come after the step was built.
        self.skipped = [model, self.inner, *self.layers, *(layer.self_attn for layer in self.layers)]

    @classmethod
    def of(cls, model: nn.Module) -> DecodeStep | None:
        """The step for `model`, or None where it cannot apply (another architecture, sliding windows)."""
        arch = ARCHITECTURES.get(type(model).__name__)
        inner = getattr(model, "model", None)
        if arch is None or inner is None:
            return None
        modeling = sys.modules.get(type(model).__module__)
        if not (hasattr(modeling, "apply_rotary_pos_emb") and hasattr(modeling, "eager_attention_forward")):
            return None
        for layer in inner.layers:
            attn = getattr(layer, "self_attn", None)
            if type(layer).__name__ != arch.layer or attn is None or arch.sliding_window(attn) is not None:
                return None
        return cls(model)

    def applies(self, cache, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **rest) -> bool:
        """Whether this call is one this step runs: tokens by id with their positions, a 2-D mask over the cache
        and them, a cache whose layers keep every column, SDPA attention, eval mode, no other argument, and no
        hook or patch on a forward it skips."""
        from tunesmith.generation.cache import plain_layer

        return (not rest and input_ids is not None and position_ids is not None and input_ids.dim() == 2
                and attention_mask is not None and attention_mask.dim() == 2 and cache is not None
                and position_ids.shape == input_ids.shape and attention_mask.shape[1] >= input_ids.shape[1]
                and len(cache.layers) == len(self.layers) and all(plain_layer(layer) for layer in cache.layers)
                and self.model.config._attn_implementation in SDPA_NAMES and not self.model.training
                and not _global_hooks() and not any(_touched(m) for m in self.skipped))

    def __call__(self, cache, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 keep: int = 1) -> torch.Tensor:
        """input_ids (B, S), attention_mask (B, T) of the whole cache after this step (its last S columns are the
        tokens fed), position_ids (B, S) -> logits (B, keep, V) of the last `keep` positions."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        h = self.inner.embed_tokens(input_ids)                                   # (B, S, hidden)
        b, s = input_ids.shape
        mask = causal_mask(attention_mask, s)                                    # (B, 1, S, T) or None
        cos, sin = self.inner.rotary_emb(h, position_ids=position_ids)           # (B, S, head_dim)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.model.config._attn_implementation, self.eager)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)     # (B, Hq, S, D)
            k = attn.k_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)     # (B, Hkv, S, D)
            v = attn.v_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
            q, k = self.rotary(q, k, cos, sin)
            k, v = cache.update(k, v, i)                                         # (B, Hkv, T, D)
            # Full attention only (`of` refuses sliding windows): what Mistral and Qwen2 pass as sliding_window=None.
            out, _ = attend(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)  # (B, S, Hq, D)
            h = h + attn.o_proj(out.reshape(b, s, -1).contiguous())
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = self.inner.norm(h)
        # transformers projects the kept positions only (`logits_to_keep`), as this slice: the same product.
        return self.model.lm_head(h[:, -keep:, :])                               # (B, keep, V)


def causal_mask(attention_mask: torch.Tensor, s: int) -> torch.Tensor | None:
    """transformers' SDPA mask for `s` new positions at the end of a cache of T columns (attention_mask (B, T),
    1 where a column is a token): None where transformers skips it (nothing masked, and one position or no cache
    before them: SDPA's own causal flag covers that), else (B, 1, S, T) booleans, True where a position may
    attend (a token's column, at or before its own)."""
    t = attention_mask.shape[1]
    if (s == 1 or s == t) and bool(attention_mask.all()):
        return None
    pad = attention_mask.bool()[:, None, None, :]                                # (B, 1, 1, T)
    if s == 1:
        return pad
    cols = torch.arange(t, device=attention_mask.device)
    own = torch.arange(t - s, t, device=attention_mask.device)                   # each new position's column
    return pad & (cols[None, :] <= own[:, None])[None, None]                     # (B, 1, S, T)
