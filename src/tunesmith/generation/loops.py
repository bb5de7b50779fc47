"""Degenerate repetition: notice when a reply has fallen into a loop, and stop it there.

A small model that has not quite learned a long structured answer often repeats itself: the same
line again and again, or a list that counts on past where it should end (`"week": 71, "week": 72`).
Greedy decoding never leaves such a loop, so the reply runs to its token budget.

What counts as a loop is read from the data, so a correct answer is never cut: a reply is stopped
when its tail repeats one block more times than `limit`, which is twice the longest run of repeats in
any reference answer (at least `MIN_REPEATS`). Blocks are compared with every run of digit tokens
collapsed to one placeholder, so a list that counts is one block repeated; a reference list of 52
weeks makes 104 repeats the limit. Blocks must also cover `MIN_SPAN` tokens in all, so "ha ha ha"
or a row of dashes is never a loop.

The check costs one numpy comparison per block length on the reply so far, every `EVERY` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_REPEATS = 4
MIN_SPAN = 24          # tokens the repeated blocks must cover together
MAX_PERIOD = 64        # longest block, in (collapsed) tokens
EVERY = 8              # decode steps between checks
DIGIT = -1


def digit_token_ids(tokenizer) -> np.ndarray:
    """Ids of the tokens that are one or more digits (what a counting list changes from block to block)."""
    vocab = tokenizer.get_vocab()
    ids = [i for tok, i in vocab.items() if tokenizer.convert_tokens_to_string([tok]).strip().isdigit()]
    return np.array(sorted(ids), dtype=np.int64)


def collapse_digits(tokens, digits: np.ndarray) -> np.ndarray:
    """`tokens` with each run of digit tokens replaced by one DIGIT."""
    a = np.asarray(tokens, dtype=np.int64)
    if not len(a):
        return a
    is_digit = np.isin(a, digits)
    a = np.where(is_digit, DIGIT, a)
    keep = ~(is_digit & np.concatenate([[False], is_digit[:-1]]))
    return a[keep]


def _runs_of_true(eq: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True in a boolean array."""
    if not eq.any():
        return np.zeros(0, dtype=np.int64)
    padded = np.concatenate([[False], eq, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[0::2]


def most_repeats(tokens, digits: np.ndarray, max_period: int = MAX_PERIOD) -> int:
    """The most times any block repeats back to back anywhere in `tokens` (1: no repetition), counting
    only repetitions that cover MIN_SPAN tokens."""
    a = collapse_digits(tokens, digits)
    best = 1
    for p in range(1, min(max_period, len(a) // 2) + 1):
        runs = _runs_of_true(a[p:] == a[:-p])
        if len(runs):
            span = runs.max() + p
            if span >= MIN_SPAN:
                best = max(best, int(span // p))
    return best


def tail_repeats(tokens, digits: np.ndarray, max_period: int = MAX_PERIOD) -> int:
    """How many times the end of `tokens` repeats one block (the most over block lengths; 1: none),
    counting only repetitions that cover MIN_SPAN tokens."""
    a = collapse_digits(tokens, digits)
    best = 1
    for p in range(1, min(max_period, len(a) // 2) + 1):
        eq = a[p:] == a[:-p]
        if not eq[-1]:
            continue
        misses = np.flatnonzero(~eq)
        trailing = len(eq) - (misses[-1] + 1 if len(misses) else 0)
        span = trailing + p
        if span >= MIN_SPAN:
            best = max(best, span // p)
    return best


@dataclass
class LoopGuard:
    """Stops replies whose tail repeats one block more than `limit` times; `stopped` counts them."""
    digits: np.ndarray
    limit: int
    stopped: int = 0

    @classmethod
    def from_references(cls, tokenizer, references: list[list[int]]) -> LoopGuard:
        digits = digit_token_ids(tokenizer)
        seen = max((most_repeats(r, digits) for r in references), default=1)
        return cls(digits, max(MIN_REPEATS, 2 * seen))

    @classmethod
    def from_samples(cls, tokenizer, samples) -> LoopGuard:
        """The limit read from the assistant answers of `samples` (chats and preference pairs)."""
        answers = [s.reference() for s in samples if s.kind in ("chat", "preference")]
        ids = tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
        return cls.from_references(tokenizer, ids)

    def looping(self, tokens) -> bool:
        return len(tokens) >= MIN_SPAN and tail_repeats(tokens, self.digits) > self.limit

    def describe(self) -> str:
        return f"replies stopped when one block repeats more than {self.limit} times"

    def stops_reply(self, reply: list[int]) -> bool:
        """The engine's per-row check, after each token: True (and counted) when `reply` loops now;
        looked at every EVERY tokens."""
        if len(reply) % EVERY or not self.looping(reply):
            return False
        self.stopped += 1
        return True
