"""Exact and near-duplicate detection.

Exact: a 16-byte digest of each example's folded text (see `normalize.exact_key`).

Near: MinHash signatures of word n-gram shingles, indexed with datasketch's `MinHashLSH`. The
signatures are computed for a whole batch at once with numpy and are bit-identical to
`datasketch.MinHash(num_perm, seed).update_batch(shingles)` (a test checks it); one MinHash per
example in Python is what makes plain datasketch pipelines slow. The LSH bands favour recall, and
candidates are confirmed by their estimated Jaccard similarity before an example is dropped, so
band collisions below the threshold never remove a distinct example. The first example of a cluster is kept; later ones
that match a kept example are removed, which makes the result depend only on the input order.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from tunesmith.data.normalize import content_words, exact_key
from tunesmith.data.schema import Sample


@dataclass(frozen=True)
class NearDupParams:
    ngram: int = 5
    threshold: float = 0.8
    num_perm: int = 128
    seed: int = 1


def exact_digest(sample: Sample) -> bytes:
    return hashlib.blake2b(exact_key(sample).encode(), digest_size=16).digest()


def shingles(words: list[str], n: int) -> list[bytes]:
    """Word n-grams; a text shorter than n words is one shingle, so short texts only match exactly."""
    if len(words) <= n:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


def _sha1_32(data: bytes) -> int:
    # datasketch's default hash (sha1_hash32): the first 4 bytes of SHA-1, little endian.
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


class MinHasher:
    """MinHash signatures for many shingle sets at once, matching datasketch's own MinHash."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        from datasketch import MinHash

        self.num_perm, self.seed = num_perm, seed
        proto = MinHash(num_perm=num_perm, seed=seed)
        self.permutations = proto.permutations
        self.scheme = proto.scheme
        if self.scheme == "affine32":
            from datasketch.minhash import _fmix

            self._fmix = _fmix
        else:  # a datasketch whose default scheme we do not mirror: use it one example at a time
            self._fmix = None

    def signatures(self, shingle_sets: list[list[bytes]]) -> np.ndarray:
        """(len(shingle_sets), num_perm) signatures; every set must hold at least one shingle."""
        if not shingle_sets:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        if self._fmix is None:
            return np.stack([self.minhash_of(s).hashvalues for s in shingle_sets])
        counts = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=len(shingle_sets))
        hv = np.fromiter((_sha1_32(x) for s in shingle_sets for x in s), dtype=np.uint32, count=int(counts.sum()))
        hv = self._fmix(hv, 32)
        a, b = self.permutations
        # (shingles, num_perm): a*h + b wraps modulo 2^32 in uint32, which is the affine32 scheme.
        phv = hv[:, None] * a[None, :] + b[None, :]
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        return np.minimum.reduceat(phv, starts, axis=0)

    def minhash_of(self, shingle_set: list[bytes], hashvalues=None):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self.permutations,
                    hashvalues=hashvalues, scheme=self.scheme)
        if hashvalues is None:
            m.update_batch(shingle_set)
        return m


class _Signature:
    """What MinHashLSH reads from a MinHash (its values, length and scheme), without building one."""

    __slots__ = ("hashvalues", "scheme")

    def __init__(self, hashvalues: np.ndarray, scheme: str):
        self.hashvalues, self.scheme = hashvalues, scheme

    def __len__(self) -> int:
        return len(self.hashvalues)


class NearDupIndex:
    """Kept examples' signatures in an LSH index; `match` answers which kept example one duplicates."""

    def __init__(self, params: NearDupParams = NearDupParams()):
        from datasketch import MinHashLSH

        self.params = params
        self.hasher = MinHasher(params.num_perm, params.seed)
        # Bands tuned for recall (weights: false positives 0.1, false negatives 0.9; 14 bands of 9 rows
        # at 0.8/128): every candidate is confirmed below, so a false positive costs one comparison,
        # while the balanced default (9 x 13) misses 11 % of pairs at Jaccard 0.89, a one-word edit
        # of an 80-word text. Band keys are hashed to 8 bytes: the index is dedup's memory cost.
        self.lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, weights=(0.1, 0.9),
                              hashfunc=lambda b: hashlib.blake2b(b, digest_size=8).digest())
        self._sigs: list[np.ndarray] = []  # kept signatures, grown in blocks to avoid a copy per insert
        self._block = 4096
        self._n = 0

    def signatures(self, samples: list[Sample]) -> np.ndarray:
        return self.hasher.signatures([shingles(content_words(s), self.params.ngram) for s in samples])

    def _sig(self, key: int) -> np.ndarray:
        return self._sigs[key // self._block][key % self._block]

    def match(self, sig: np.ndarray) -> int | None:
        """The earliest kept example whose estimated Jaccard with `sig` reaches the threshold, else None."""
        hits = self.lsh.query(_Signature(sig, self.hasher.scheme))
        for key in sorted(hits):
            if float(np.mean(self._sig(key) == sig)) >= self.params.threshold:
                return key
        return None

    def add(self, sig: np.ndarray) -> int:
        key = self._n
        if key % self._block == 0:
            self._sigs.append(np.empty((self._block, self.params.num_perm), dtype=sig.dtype))
        self._sigs[-1][key % self._block] = sig
        self.lsh.insert(key, _Signature(sig, self.hasher.scheme), check_duplication=False)
        self._n += 1
        return key

    def __len__(self) -> int:
        return self._n
