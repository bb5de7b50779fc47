"""Offline batch generation: a list of conversations in, one reply each out (evaluation, regression
checks, the judge, anything that has all its prompts up front).

Every prompt goes through the engine (engine.py) on the calling thread, longest first: rows join
the running batch as others finish, so a batch never waits for its slowest reply. Greedy by default;
with sampling, reply i draws from its own generator seeded `seed + i`, so a run is reproducible
whatever the batch size. Plain models, peft models of any kind (prompt and prefix tuning included)
and tunesmith's own adapters all run as they are: the engine calls the model's forward.
"""

from __future__ import annotations

import torch

from tunesmith.data.tokenize import prompt_ids
from tunesmith.generation.batching import left_pad, positions
from tunesmith.generation.cache import ModelCall
from tunesmith.generation.eft import EmulatedFineTune
from tunesmith.generation.engine import Engine
from tunesmith.generation.loops import LoopGuard
from tunesmith.generation.memory import rows_that_fit
from tunesmith.generation.prefix import common_prefix
from tunesmith.generation.request import GenRequest
from tunesmith.generation.sampling import default_top_k
from tunesmith.generation.speculate import DraftModel, PromptLookup
from tunesmith.generation.stops import stop_token_ids


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


def encode_prompt(tokenizer, prompt: list[dict] | str, system_prompt: str | None = None) -> list[int]:
    """A conversation through the chat template, or a plain string as it is (a raw completion prompt)."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt_ids(tokenizer, prompt, system_prompt)


@torch.no_grad()
def generate_tokens(model, tokenizer, conversations: list[list[dict] | str], *, max_new_tokens: int = 128,
                    batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                    system_prompt: str | None = None, precision: str = "fp32", progress=None,
                    loop_guard: LoopGuard | None = None, prompt_lookup: int = 0,
                    draft_model=None, draft_tokens: int = 4, eft_large=None, eft_beta: float = 1.0,
                    stop: tuple[str, ...] = ()) -> list[list[int]]:
    """The new token ids of each reply, cut before its first stop token.

    A conversation given as a plain string is a raw completion prompt (no chat template). `stop`
    strings end a reply where its text first holds one; the ids then still cover the stop string
    (decode and cut at it).

    `batch_size` rows decode together, fewer when their KV cache would not fit half the free memory
    (memory.py). `progress(n)`, if given, is called as replies finish.
    Sampling uses the model's default top_k, as `model.generate` does when none is given.
    `loop_guard`, if given, stops a reply that has fallen into a repetition loop where it notices it
    (generation/loops.py) and counts it in `loop_guard.stopped`. `prompt_lookup` > 0 drafts that many
    tokens per step from the prompt (speculate.py); `draft_model` (a model sharing the tokenizer) drafts
    `draft_tokens` instead. Greedy replies are the same either way. `eft_large` (a larger base sharing
    the tokenizer) decodes by emulated fine-tuning with `model`'s adapter as the small fine-tune (eft.py).
    """
    encoded = [encode_prompt(tokenizer, conv, system_prompt) for conv in conversations]
    if not encoded:
        return []
    # Longest first, so the batch pads little and memory peaks at the start.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    sink = (lambda event: progress(1) if event.final else None) if progress is not None else (lambda event: None)
    check = loop_guard.stops_reply if loop_guard is not None else None
    top_k = default_top_k(model)
    requests = [GenRequest(prompt_ids=encoded[i], sink=sink, max_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, seed=seed + i, index=i, text=bool(stop), stop=tuple(stop),
                           check=check,
                           timeout_s=float("inf")) for i in order]
    lookup = PromptLookup(max_draft=prompt_lookup) if prompt_lookup else None
    draft = DraftModel(draft_model, max_draft=draft_tokens) if draft_model is not None else None
    # Never more rows than their KV cache has memory for (memory.py); the longest prompt goes first.
    rows = min(batch_size, rows_that_fit(model, len(encoded[order[0]]) + max_new_tokens))
    engine = Engine(model, tokenizer, None, stop_token_ids(tokenizer), max_batch=rows,
                    max_queue=len(requests), lookup=lookup, draft=draft,
                    eft=EmulatedFineTune(eft_large, eft_beta) if eft_large is not None else None,
                    shared_prefix=common_prefix(encoded), precision=precision)
    was_training = model.training
    model.eval()
    try:
        engine.run(requests)
    finally:
        model.train(was_training)
    outputs: list[list[int]] = [[] for _ in encoded]
    for row in requests:
        outputs[row.index] = list(row.generated)
    return outputs
