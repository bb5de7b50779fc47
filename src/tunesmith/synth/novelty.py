"""ROUGE-L novelty (Self-Instruct's filter) and n-gram overlap with a held-out set (decontamination).

ROUGE-L is the F-measure of the longest common subsequence of two token lists, tokenised as
`rouge-score` tokenises (lower case, runs of anything but [a-z0-9] split words; a test checks the
scores match `rouge_score.RougeScorer(["rougeL"])`). Tokens are computed once per text instead of
once per comparison, which is what makes checking every candidate against every accepted one cheap.
"""

from __future__ import annotations

import os
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


def shared_prefix(texts: list[str]) -> str:
    """The opening every text shares, cut back to a whole word ("" for fewer than two texts)."""
    if len(texts) < 2:
        return ""
    prefix = os.path.commonprefix(texts)
    if any(len(t) == len(prefix) for t in texts):
        return ""
    cut = max(prefix.rfind("\n"), prefix.rfind(" "))
    return prefix[:cut + 1] if cut >= 0 else ""


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of `text`; a text shorter than n words is one n-gram (it can only match whole)."""
    words = rouge_tokens(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _frequent(texts: list[str], n: int, share: float) -> set[tuple]:
    """n-grams found in more than `share` of `texts`, and in at least 2 of them."""
    counts: dict[tuple, int] = {}
    for text in texts:
        for g in word_ngrams(text, n):
            counts[g] = counts.get(g, 0) + 1
    limit = max(2, share * len(texts))
    return {g for g, c in counts.items() if c >= limit}


class HeldOutIndex:
    """The held-out set's word n-grams, minus the task's boilerplate.

    An instruction every example repeats ("Extract the order as JSON with keys ...") is the task,
    not a leak: n-grams found in more than `common` (and at least 2) of the training inputs, or of
    the held-out examples, are ignored. Anything else shared with a held-out example, including
    what a single input shares with it, is contamination."""

    def __init__(self, held_out: list[tuple[str, str]], n: int, boilerplate: list[str] = (), common: float = 0.1):
        self.n = n
        # The opening every input shares is cut first, so n-grams straddling it and the varying part
        # ("... or normal. Order: The Athens office needs") do not count as a leak.
        self.prefix = shared_prefix(list(boilerplate))
        boilerplate = [self._varying(t) for t in boilerplate]
        held_out = [(ident, self._varying(text)) for ident, text in held_out]
        self.owner: dict[tuple, str] = {}
        for ident, text in held_out:
            for g in word_ngrams(text, n):
                self.owner.setdefault(g, ident)
        frequent = _frequent([t for _, t in held_out], n, common) | _frequent(list(boilerplate), n, common)
        self.grams = set(self.owner) - frequent

    def _varying(self, text: str) -> str:
        return text[len(self.prefix):] if self.prefix and text.startswith(self.prefix) else text

    def overlap(self, text: str) -> str | None:
        """The id of a held-out example `text` shares an n-gram with, or None."""
        for g in word_ngrams(self._varying(text), self.n):
            if g in self.grams:
                return self.owner[g]
        return None
