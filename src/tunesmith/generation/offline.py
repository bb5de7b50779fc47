"""Offline batch generation: a list of conversations in, one reply each out (evaluation, regression
checks, anything that has all its prompts up front).

Prompts are sorted longest first and cut into left-padded batches; greedy by default, or seeded
sampling (one torch seed per batch, so a run is reproducible). Ordinary models and non-prompt
adapters decode with `model.generate`; peft prompt-learning adapters with `VirtualTokenDecoder`.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import StoppingCriteriaList

from tunesmith.data.tokenize import prompt_ids
from tunesmith.generation.batching import left_pad, pad_id, positions
from tunesmith.generation.cache import ModelCall
from tunesmith.generation.loops import LoopGuard
from tunesmith.generation.sampling import default_top_k, generate_kwargs, sampler
from tunesmith.generation.stops import cut_at_stop, stop_token_ids
from tunesmith.generation.virtual_tokens import VirtualTokenDecoder, virtual_token_kind


@torch.no_grad()
def next_token_logits(model, sequences: list[list[int]], pad: int = 0) -> torch.Tensor:
    """(B, V) float logits of the token that would follow each sequence: one left-padded forward, no
    cache, and only the last position projected onto the vocabulary (a judge scoring its choices)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(sequences, pad, device)                                 # (B, T)
    return ModelCall(model).last_logits(None, input_ids=ids, attention_mask=mask, position_ids=positions(mask)).float()


def generate(model, tokenizer, conversations: list[list[dict]], *, system_prompt: str | None = None,
             **options) -> list[str]:
    """Generate one reply per conversation (each a list of messages ending with the user turn)."""
    replies = generate_tokens(model, tokenizer, conversations, system_prompt=system_prompt, **options)
    return [tokenizer.decode(new, skip_special_tokens=True).strip() for new in replies]


@torch.no_grad()
def generate_tokens(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 128,
                    batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                    system_prompt: str | None = None, precision: str = "fp32", progress=None,
                    loop_guard: LoopGuard | None = None) -> list[list[int]]:
    """The new token ids of each reply, cut before its first stop token.

    `progress(n)`, if given, is called after each batch with the number of replies it finished.
    Sampling uses the model's default top_k, as `model.generate` does when none is given.
    `loop_guard`, if given, stops a reply that has fallen into a repetition loop where it notices it
    (generation/loops.py) and counts it in `loop_guard.stopped`.
    """
    encoded = [prompt_ids(tokenizer, conv, system_prompt) for conv in conversations]
    # Longest first, so each batch pads little and memory peaks at the start.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs: list[list[int]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    stops = stop_token_ids(tokenizer)
    kind = virtual_token_kind(model)
    decoder = VirtualTokenDecoder(model, kind) if kind else None
    top_k = default_top_k(model)
    pick = sampler(temperature, top_p, top_k) if decoder else None
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in chunk], pad, device)         # (B, T)
        if temperature > 0:
            torch.manual_seed(seed + start)
        watch = loop_guard.watch(len(chunk), stops) if loop_guard is not None else None
        with autocast:
            if decoder is not None:
                new_tokens = decoder(ids, mask, max_new_tokens, stops, pad, pick, on_step=watch)
            else:
                kwargs = generate_kwargs(max_new_tokens, pad, stops, temperature, top_p, top_k)
                if watch is not None:
                    kwargs["stopping_criteria"] = StoppingCriteriaList([watch.criterion(ids.shape[1])])
                new_tokens = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
        for r, i in enumerate(chunk):
            outputs[i] = cut_at_stop(new_tokens[r].tolist(), stops)
            if watch is not None and watch.cut[r] is not None:
                outputs[i] = outputs[i][:watch.cut[r]]
        if progress is not None:
            progress(len(chunk))
    model.train(was_training)
    return outputs
