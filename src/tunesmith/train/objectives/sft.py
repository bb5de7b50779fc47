"""Supervised fine-tuning: next-token NLL on the target tokens (the assistant's replies, or all text).

Examples are packed into rows (data/packing.py) unless the method prepends per-row tokens; the loss
projects only target positions through the vocabulary (train/loss.py), and packed rows run with
attention that keeps examples apart (train/attention.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from tunesmith.data.lengths import fixed_max_len
from tunesmith.data.packing import Batch, collate
from tunesmith.data.tokenize import Tokenized, token_lengths, tokenize_all
from tunesmith.train.attention import packed_attention_for
from tunesmith.train.attention import supports as attention_supports
from tunesmith.train.loss import causal_lm_nll
from tunesmith.train.objectives.base import Objective, ObjectiveLoss, refuse_records, register_objective

_NO_METRICS: dict = {}


@register_objective
@dataclass
class SFT(Objective):
    name = "sft"
    summary = "next-token loss on target tokens, packed rows, fused vocabulary projection"
    data = "chat, text, or the chosen side of pairs"

    max_len: int = 2048
    pad_id: int = 0
    pack: bool = True
    # True: one padding-free row per micro-batch; None: when rows would waste padding (collate
    # decides); False: padded rows.
    flat: bool | None = False
    # Decoder + target-only head (the fused loss); False when the method changes the forward
    # (virtual tokens, prefixes) so the model's own forward must run.
    fast: bool = True

    @staticmethod
    def _refuse_feedback(samples) -> None:
        refuse_records(samples, {"chat", "text", "preference"},
                       "objective 'sft' does not train on feedback labelled desirable/undesirable (it would learn the "
                       "undesirable answers too)", hint="set objective.name: kto, or keep only desirable records as chat data")

    @classmethod
    def lengths(cls, tokenizer, samples, data_cfg) -> list[int]:
        cls._refuse_feedback(samples)
        return token_lengths(tokenizer, samples, data_cfg.system_prompt)

    @classmethod
    def tokenize(cls, tokenizer, samples, data_cfg):
        cls._refuse_feedback(samples)
        return tokenize_all(tokenizer, samples, max_len=fixed_max_len(data_cfg), overlong=data_cfg.overlong,
                            train_on_inputs=data_cfg.train_on_inputs, system_prompt=data_cfg.system_prompt)

    @classmethod
    def for_run(cls, prepared, tokenizer, data_cfg, options=None) -> SFT:
        # Methods that prepend per-row tokens (prompt/prefix tuning) need one example per row.
        pack = data_cfg.packing and prepared.packing
        return cls(max_len=fixed_max_len(data_cfg),
                   pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                   pack=pack,
                   # Padding-free rows only where our packed attention runs the model.
                   flat=None if pack and attention_supports(prepared.model) else False,
                   fast=prepared.fast_loss)

    def collate(self, examples: list[Tokenized]) -> Batch:
        return collate(examples, pack=self.pack, max_len=self.max_len, pad_id=self.pad_id, flat=self.flat)

    def units(self, batch: Batch) -> int:
        return batch.n_targets

    def tokens(self, batch: Batch) -> tuple[int, int]:
        return batch.real_tokens, batch.input_ids.numel()

    def loss(self, model, batch: Batch) -> ObjectiveLoss:
        nll, n = causal_lm_nll(model, batch.input_ids, batch.position_ids, batch.targets, fast=self.fast)
        return ObjectiveLoss(nll, n, _NO_METRICS)

    def context(self, model):
        return packed_attention_for(model) if self.fast else contextlib.nullcontext()
