"""BM25 over a list of texts (through `bm25s`), with a deterministic ranking.

Both retrieval baselines use it: retrieval few-shot ranks training prompts against a test prompt,
RAG ranks document passages against it. Ties (all-zero scores when no query word is known) keep
the corpus order, so the same data always gives the same prompts.
"""

from __future__ import annotations

import numpy as np

from tunesmith.errors import UserError

STOPWORDS = "en"


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise UserError("the retrieval baselines need the bm25s package",
                        hint="pip install 'tunesmith[retrieval]' (or pip install bm25s)") from None
    return bm25s


class BM25Index:
    def __init__(self, texts: list[str]):
        bm25s = _bm25s()
        self.size = len(texts)
        self._bm25s = bm25s
        self._index = bm25s.BM25()
        if texts:
            self._index.index(bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every text for `query`, shape (len(texts),)."""
        words = self._bm25s.tokenize([query], stopwords=STOPWORDS, return_ids=False, show_progress=False)[0]
        if not self.size or not words:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._index.get_scores(words), dtype=np.float32)

    def top(self, query: str, k: int, exclude: set[int] = frozenset()) -> list[int]:
        """Indices of the `k` best texts for `query`, best first (ties in corpus order)."""
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")
        return [int(i) for i in order if int(i) not in exclude][:k]
