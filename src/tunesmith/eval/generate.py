"""Batched generation with left padding, greedy or seeded sampling.

peft's prompt-learning adapters (prompt tuning, p-tuning, prefix tuning) do not go through
`model.generate`: peft 0.21's `prepare_inputs_for_generation` looks for the cache under
`past_key_values`, which transformers 5 renamed to `cache`, so it re-inserts the virtual tokens
at every step (prompt tuning) or builds a prefix cache the model ignores (prefix tuning); it also
drops `position_ids` for prompt tuning, so left padding shifts every real position. Those adapters
run through `VirtualTokenDecoder`, a KV-cached loop on the base model that places the virtual
tokens at positions 0..n-1 and the i-th real token at n+i in every row, as in training.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

from tunesmith.data.templates import end_of_turn_text
from tunesmith.data.tokenize import prompt_ids
from tunesmith.errors import UserError

_EMBEDDING_PROMPTS = frozenset({"PROMPT_TUNING", "P_TUNING"})   # virtual input embeddings
_KV_PREFIXES = frozenset({"PREFIX_TUNING"})                       # virtual keys/values in every layer


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    eot = end_of_turn_text(tokenizer)
    if eot:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        if isinstance(eot_id, int) and eot_id != tokenizer.unk_token_id:
            ids.add(eot_id)
    return sorted(i for i in ids if i is not None)


def virtual_token_kind(model) -> str | None:
    """How a peft prompt-learning adapter adds its virtual tokens ("embeddings" or "kv"); None for any
    other model, which `model.generate` handles."""
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


class VirtualTokenDecoder:
    """Greedy or sampled decoding for a peft prompt-learning model, one KV cache per batch.

    `on_step(tokens)`, if given, sees each step's new token per row and may return a bool mask of
    rows to stop (the server streams and cancels rows through it)."""

    def __init__(self, model, kind: str):
        self.model = model
        self.kind = kind
        self.base = model.get_base_model()
        params = inspect.signature(self.base.forward).parameters
        # transformers 5 names the cache argument `cache`; older releases `past_key_values`.
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _logits(self, cache, **inputs) -> torch.Tensor:
        out = self.base(**inputs, **{self.cache_arg: cache}, use_cache=True, **self.keep_last)
        return out.logits[:, -1].float()

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, stops: list[int], pad: int,
                 pick, on_step=None) -> torch.Tensor:
        from transformers import DynamicCache

        batch = ids.shape[0]
        lengths = mask.sum(dim=1, keepdim=True)
        if self.kind == "kv":
            cache = self.model.get_prompt(batch_size=batch)
            if not isinstance(cache, DynamicCache):
                cache = DynamicCache(cache)
            n = cache.get_seq_length()
            inputs = {"input_ids": ids}
        else:
            embeds = self.model.get_input_embeddings()(ids)
            prompts = self.model.get_prompt(batch_size=batch).to(embeds.dtype)
            n = prompts.shape[1]
            cache = DynamicCache(config=self.base.config)
            inputs = {"inputs_embeds": torch.cat((prompts, embeds), dim=1)}
        # Real tokens count from n in each row whatever its padding; pads get any position, being masked.
        real = (n + mask.cumsum(dim=1) - 1).clamp(min=n)
        virtual = torch.arange(n, device=ids.device).expand(batch, n)
        positions = real if self.kind == "kv" else torch.cat((virtual, real), dim=1)
        attn = torch.cat((torch.ones((batch, n), dtype=mask.dtype, device=mask.device), mask), dim=1)
        logits = self._logits(cache, attention_mask=attn, position_ids=positions, **inputs)
        stop = torch.tensor(stops, device=ids.device)
        done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        new = []
        for step in range(max_new_tokens):
            token = pick(logits).masked_fill(done, pad)
            new.append(token)
            done |= torch.isin(token, stop)
            if on_step is not None and (stopped := on_step(token)) is not None:
                done |= stopped.to(done.device)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attn = torch.cat((attn, torch.ones((batch, 1), dtype=attn.dtype, device=attn.device)), dim=1)
            logits = self._logits(cache, input_ids=token[:, None], attention_mask=attn,
                                  position_ids=n + lengths + step)
        return torch.stack(new, dim=1) if new else ids.new_zeros((batch, 0))


def default_top_k(model) -> int | None:
    """The top_k `model.generate` samples with when the caller sets none (transformers' default is 50)."""
    top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
    return 50 if top_k is None else top_k


def sampler(temperature: float, top_p: float = 1.0, top_k: int | None = None):
    """Next-token choice from last-position logits, with `model.generate`'s warpers in its order."""
    if temperature <= 0:
        return lambda logits: logits.argmax(dim=-1)
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    return lambda logits: torch.multinomial(torch.softmax(warpers(None, logits), dim=-1), 1)[:, 0]


def generate(model, tokenizer, conversations: list[list[dict]], *, system_prompt: str | None = None,
             **options) -> list[str]:
    """Generate one reply per conversation (each a list of messages ending with the user turn)."""
    replies = generate_tokens(model, tokenizer, conversations, system_prompt=system_prompt, **options)
    return [tokenizer.decode(new, skip_special_tokens=True).strip() for new in replies]


@torch.no_grad()
def generate_tokens(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 128,
                    batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                    system_prompt: str | None = None, precision: str = "fp32", progress=None) -> list[list[int]]:
    """The new token ids of each reply, cut before its first stop token."""
    encoded = [prompt_ids(tokenizer, conv, system_prompt) for conv in conversations]
    # Longest first, so each batch pads little and memory peaks at the start.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs: list[list[int]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer)
    kind = virtual_token_kind(model)
    decoder = VirtualTokenDecoder(model, kind) if kind else None
    pick = sampler(temperature, top_p, default_top_k(model)) if decoder else None
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            seq = encoded[i]
            ids[r, width - len(seq):] = torch.tensor(seq)
            mask[r, width - len(seq):] = 1
        if temperature > 0:
            torch.manual_seed(seed + start)
        with autocast:
            if decoder is not None:
                new_tokens = decoder(ids.to(device), mask.to(device), max_new_tokens, stops, pad, pick)
            else:
                kwargs = _generate_kwargs(max_new_tokens, pad, stops, temperature, top_p)
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
                new_tokens = out[:, width:]
        for r, i in enumerate(chunk):
            new = new_tokens[r].tolist()
            outputs[i] = new[:next((k for k, t in enumerate(new) if t in stops), len(new))]
        if progress is not None:
            progress(len(chunk))
    model.train(was_training)
    return outputs


def _generate_kwargs(max_new_tokens: int, pad: int, stops: list[int], temperature: float, top_p: float) -> dict:
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stops)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs
