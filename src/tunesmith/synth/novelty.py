"""ROUGE-L novelty (Self-Instruct's filter) and n-gram overlap with a held-out set (decontamination).

ROUGE-L is the F-measure of the longest common subsequence of two token lists, tokenised as
`rouge-score` tokenises (lower case, runs of anything but [a-z0-9] split words; a test checks the
scores match `rouge_score.RougeScorer(["rougeL"])`). Tokens are computed once per text instead of
once per comparison, which is what makes checking every candidate against every accepted one cheap.
"""

from __future__ import annotations

import re

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    lcs = lcs_length(a, b)
    if not lcs:
        return 0.0
    p, r = lcs / len(b), lcs / len(a)
    return 2 * p * r / (p + r)


class NoveltyPool:
    """Texts seen so far; `closest(text)` is the highest ROUGE-L against any of them."""

    def __init__(self, texts: list[str] = ()):
        self.tokens = [rouge_tokens(t) for t in texts]

    def closest(self, text: str) -> float:
        tokens = rouge_tokens(text)
        best = 0.0
        for other in self.tokens:
            # ROUGE-L cannot exceed 2*min/(len sum); skip pairs whose lengths already rule out `best`.
            if 2 * min(len(tokens), len(other)) / max(1, len(tokens) + len(other)) <= best:
                continue
            best = max(best, rouge_l(other, tokens))
        return best

    def add(self, text: str) -> None:
        self.tokens.append(rouge_tokens(text))


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of `text`; a text shorter than n words is one n-gram (it can only match whole)."""
    words = rouge_tokens(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class HeldOutIndex:
    """The held-out set's word n-grams, minus the task's boilerplate.

    An instruction every example repeats ("Extract the order as JSON with keys ...") is the task,
    not a leak: n-grams found in the training inputs, or in more than `common` of the held-out
    examples, are ignored. Anything else shared with a held-out example is contamination."""

    def __init__(self, held_out: list[tuple[str, str]], n: int, boilerplate: list[str] = (), common: float = 0.1):
        self.n = n
        counts: dict[tuple, int] = {}
        self.owner: dict[tuple, str] = {}
        for ident, text in held_out:
            for g in word_ngrams(text, n):
                counts[g] = counts.get(g, 0) + 1
                self.owner.setdefault(g, ident)
        shared = {g for text in boilerplate for g in word_ngrams(text, n)}
        limit = max(2, common * len(held_out))
        self.grams = {g for g, c in counts.items() if c <= limit and g not in shared}

    def overlap(self, text: str) -> str | None:
        """The id of a held-out example `text` shares an n-gram with, or None."""
        for g in word_ngrams(text, self.n):
            if g in self.grams:
                return self.owner[g]
        return None
