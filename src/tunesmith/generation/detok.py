"""Token ids -> text deltas, with stop strings.

Text is re-decoded from all generated ids each step (byte-level BPE merges change earlier
characters), and the tail that could still become a stop string or is half a UTF-8 character is
held back, so a streamed answer never shows text that the final answer does not contain.
"""

from __future__ import annotations


def _held_back(text: str, stops) -> int:
    """How many trailing characters of `text` must wait for more tokens."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, 1)
    return hold


def stop_index(text: str, stops) -> int:
    """Where the first of `stops` begins in `text` (-1: none does)."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


def advance(tokenizer, row, at_limit: bool) -> tuple[str, bool]:
    """Decode `row.generated`; return (new text to send, whether a stop string ended the answer)."""
    text = tokenizer.decode(row.generated, skip_special_tokens=True)
    cut = stop_index(text, row.stop)
    if cut >= 0:
        delta = text[row.emitted:cut] if cut > row.emitted else ""
        row.emitted = max(row.emitted, cut)
        return delta, True
    ready = len(text) if at_limit else len(text) - _held_back(text, row.stop)
    delta = text[row.emitted:ready] if ready > row.emitted else ""
    row.emitted = max(row.emitted, ready)
    return delta, False
