"""Which token ids end an answer."""

from __future__ import annotations

from tunesmith.data.templates import end_of_turn_text


def stop_token_ids(tokenizer) -> list[int]:
    """eos plus the chat template's end-of-turn token (`<|im_end|>`, `<|eot_id|>` ...), sorted."""
    ids = {tokenizer.eos_token_id}
    eot = end_of_turn_text(tokenizer)
    if eot:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        if isinstance(eot_id, int) and eot_id != tokenizer.unk_token_id:
            ids.add(eot_id)
    return sorted(i for i in ids if i is not None)


def cut_at_stop(tokens: list[int], stops) -> list[int]:
    """`tokens` up to (not including) the first stop token."""
    return tokens[:next((k for k, t in enumerate(tokens) if t in stops), len(tokens))]
