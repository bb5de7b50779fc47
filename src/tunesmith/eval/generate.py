"""Batched generation with left padding, greedy or seeded sampling."""

from __future__ import annotations

import contextlib

import torch

from tunesmith.data.templates import end_of_turn_text
from tunesmith.data.tokenize import prompt_ids


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    eot = end_of_turn_text(tokenizer)
    if eot:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        if isinstance(eot_id, int) and eot_id != tokenizer.unk_token_id:
            ids.add(eot_id)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 128, batch_size: int = 16,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, system_prompt: str | None = None,
             precision: str = "fp32", progress=None) -> list[str]:
    """Generate one reply per conversation (each a list of messages ending with the user turn)."""
    encoded = [prompt_ids(tokenizer, conv, system_prompt) for conv in conversations]
    # Longest first, so each batch pads little and memory peaks at the start.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer)
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
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stops)
        if temperature > 0:
            torch.manual_seed(seed + start)
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with autocast:
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for r, i in enumerate(chunk):
            new = out[r, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            outputs[i] = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
        if progress is not None:
            progress(len(chunk))
    model.train(was_training)
    return outputs
