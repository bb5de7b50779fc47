"""Speculative decoding with prompt lookup: draft tokens copied from the request's own text.

Extraction and rewriting answers copy long runs of their prompt. When the last `n` tokens of a row
(prompt + answer so far) occurred earlier, the tokens that followed that occurrence are a cheap
guess of what comes next (Saxena 2023, "prompt lookup decoding"; transformers' `prompt_lookup_num_tokens`).
The engine feeds the row's newest token and its draft in one forward pass, keeps the longest prefix
of the draft the model itself would have chosen, plus the model's own next token: greedy output is
exactly plain decoding's, at the cost of one wider forward pass instead of several narrow ones.

A row whose drafts are mostly rejected pays for the wider passes and gains nothing, so each row
measures its acceptance and stops speculating when it falls below `min_acceptance`.
"""

from __future__ import annotations

from dataclasses import dataclass

NGRAM_MAX = 3            # longest suffix searched for, in tokens (longer = more specific matches)
NGRAM_MIN = 1
JUDGE_AFTER = 16         # drafted tokens a row must have offered before its acceptance decides anything


@dataclass
class PromptLookup:
    """Drafts up to `max_draft` tokens per step for greedy rows; off for a row below `min_acceptance`."""
    max_draft: int = 8
    min_acceptance: float = 0.3
    # Wider batches are compute-bound on a CPU: every drafted column costs a full token of work.
    max_batch: int = 4

    def draft(self, row) -> list[int]:
        """Tokens that followed the latest earlier occurrence of the row's last n tokens (n = 3, 2, 1)."""
        if not row.speculating or row.temperature > 0:
            return []
        budget = min(self.max_draft, row.max_tokens - row.sampled - 1)
        if budget <= 0:
            return []
        context = row.prompt_ids + row.generated
        end = len(context)
        for n in range(min(NGRAM_MAX, end - 1), NGRAM_MIN - 1, -1):
            tail = context[end - n:]
            first = tail[0]
            # Latest start s < end - n with context[s:s+n] == tail, and at least one token after it.
            for s in range(end - n - 1, -1, -1):
                if context[s] == first and context[s:s + n] == tail:
                    return context[s + n:s + n + budget]
        return []

    def record(self, row, drafted: int, accepted: int) -> None:
        """Count one verification; switch the row off when speculation has not paid."""
        row.drafted += drafted
        row.accepted_drafts += accepted
        if row.drafted >= JUDGE_AFTER and row.accepted_drafts < self.min_acceptance * row.drafted:
            row.speculating = False


def accepted_prefix(draft: list[int], chosen: list[int]) -> int:
    """How many leading draft tokens the model chose itself: chosen[j] is its token after draft[:j]."""
    n = 0
    while n < len(draft) and chosen[n] == draft[n]:
        n += 1
    return n
