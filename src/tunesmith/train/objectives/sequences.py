"""Batches of scored answers, and each answer's summed log-probability in one forward.

Preference objectives compare whole answers, so what they need from the model is, per answer, the
sum of its tokens' log-probs (and the number of those tokens). All answers of a micro-batch (chosen
and rejected alike) go through one forward: concatenated into one padding-free row where the
packed attention runs the model (each answer attends only to its own prompt and itself), else one
padded row each. Only answer positions are projected through the vocabulary (train/loss.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.tokenize import IGNORE, Answer
from tunesmith.train.loss import target_logps


@dataclass
class AnswerBatch:
    input_ids: torch.Tensor      # (R, L)
    position_ids: torch.Tensor   # (R, L), restarting at each answer's sequence
    targets: torch.Tensor        # (R, L) next-token targets on answer positions, IGNORE elsewhere
    seq_index: torch.Tensor      # (n,) the sequence each target belongs to, in row-major target order
    n_targets: torch.Tensor      # (S,) float, target tokens per sequence
    desirable: torch.Tensor      # (S,) bool: KTO's labels (all True for pairs, unused there)
    n_units: int                 # what the loss is summed over: pairs, or answers for KTO
    real_tokens: int

    @property
    def n_seqs(self) -> int:
        return self.n_targets.shape[0]


def collate_answers(answers: list[Answer], *, flat: bool, pad_id: int, n_units: int,
                    desirable: list[bool] | None = None) -> AnswerBatch:
    lengths = [len(a) for a in answers]
    if flat:
        width, rows = sum(lengths), 1
    else:
        width, rows = max(lengths), len(answers)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((rows, width), dtype=torch.long)
    targets = torch.full((rows, width), IGNORE, dtype=torch.long)
    seq = torch.full((rows, width), -1, dtype=torch.long)
    offset = 0
    for k, a in enumerate(answers):
        r, o = (0, offset) if flat else (k, 0)
        n = len(a)
        tokens = torch.tensor(a.ids, dtype=torch.long)
        ids[r, o:o + n] = tokens
        pos[r, o:o + n] = torch.arange(n)
        # Position t predicts token t + 1: answer tokens start..n-1 are predicted at start-1..n-2.
        targets[r, o + a.start - 1:o + n - 1] = tokens[a.start:]
        seq[r, o + a.start - 1:o + n - 1] = k
        if not flat and n < width:   # padding continues the positions, so a causal model never sees it first
            pos[r, n:] = torch.arange(n, width)
        offset += n
    mask = targets != IGNORE
    return AnswerBatch(ids, pos, targets, seq[mask], torch.tensor([float(a.n_targets) for a in answers]),
                       torch.tensor(desirable if desirable is not None else [True] * len(answers)),
                       n_units, sum(lengths))


def answer_logps(model, batch: AnswerBatch, *, fast: bool) -> torch.Tensor:
    """(S,) float32 summed log-prob of each sequence's answer tokens; differentiable."""
    per_token = target_logps(model, batch.input_ids, batch.position_ids, batch.targets, fast=fast)   # (n,)
    return per_token.new_zeros(batch.n_seqs).index_add(0, batch.seq_index, per_token)
