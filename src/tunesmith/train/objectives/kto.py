"""KTO: preference training from unpaired feedback (an answer and whether it is desirable).

Per answer y with log-ratio rho = log pi(y) - log ref(y), and z = a batch estimate of KL(pi || ref)
(the mean log-ratio of mismatched answers: each prompt with the previous example's answer, as the
paper and TRL do; clamped at 0, no gradient):

    desirable     w_d (1 - s(beta (rho - z)))
    undesirable   w_u (1 - s(beta (z - rho)))

summed over answers (the trainer divides by the step's answer count). Preference pairs are read
as one desirable and one undesirable answer each. The KL estimate needs at least two examples per
micro-batch; with one, z is the example's own log-ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tunesmith.data.lengths import fixed_max_len
from tunesmith.data.tokenize import Answer, Feedback, feedback_lengths, tokenize_feedback
from tunesmith.errors import ConfigError
from tunesmith.train.objective_options import KTOOptions
from tunesmith.train.objectives.base import ObjectiveLoss, refuse_records, register_objective
from tunesmith.train.objectives.preference import ReferenceObjective
from tunesmith.train.objectives.sequences import AnswerBatch, answer_logps, collate_answers


@dataclass
class KTOBatch:
    answers: AnswerBatch      # the examples, labelled
    mismatched: AnswerBatch   # prompt i with answer i - 1, for the KL estimate


@register_objective
@dataclass
class KTO(ReferenceObjective):
    name = "kto"
    summary = "Kahneman-Tversky optimisation on unpaired desirable / undesirable answers, against a reference"
    data = "unpaired feedback (kto), or pairs read as one desirable and one undesirable answer"
    options: ClassVar = KTOOptions
    metric_names = ("kl", "reward_accuracy", "logps")

    @staticmethod
    def _need_feedback(samples) -> None:
        refuse_records(samples, {"unpaired", "preference"}, "objective 'kto' trains on answers labelled desirable or "
                       "not (prompt, completion, label) or on preference pairs", hint="use data in the kto or preference format")

    @classmethod
    def lengths(cls, tokenizer, samples, data_cfg) -> list[int]:
        cls._need_feedback(samples)
        return feedback_lengths(tokenizer, samples, data_cfg.system_prompt)

    @classmethod
    def tokenize(cls, tokenizer, samples, data_cfg):
        cls._need_feedback(samples)
        return tokenize_feedback(tokenizer, samples, max_len=fixed_max_len(data_cfg), system_prompt=data_cfg.system_prompt)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        micro = cfg.train.micro_batch_size or cfg.train.batch_size
        if micro < 2:
            raise ConfigError("objective 'kto' needs at least 2 examples per micro-batch: its KL estimate pairs each prompt "
                              "with another example's answer", hint="raise train.micro_batch_size (or train.batch_size) to 2 or more")

    def collate(self, items: list[Feedback]) -> KTOBatch:
        answers = [f.answer for f in items]
        shifted = [Answer(a.ids[:a.start] + answers[i - 1].ids[answers[i - 1].start:], a.start)
                   for i, a in enumerate(answers)]
        kw = {"flat": self.flat, "pad_id": self.pad_id, "n_units": len(items)}
        return KTOBatch(collate_answers(answers, desirable=[f.desirable for f in items], **kw),
                        collate_answers(shifted, **kw))

    def units(self, batch: KTOBatch) -> int:
        return batch.answers.n_units

    def tokens(self, batch: KTOBatch) -> tuple[int, int]:
        return batch.answers.real_tokens, batch.answers.input_ids.numel()

    def to_device(self, batch: KTOBatch, device) -> KTOBatch:
        return KTOBatch(super().to_device(batch.answers, device), super().to_device(batch.mismatched, device))

    def loss(self, model, batch: KTOBatch) -> ObjectiveLoss:
        policy = answer_logps(model, batch.answers, fast=self.fast)
        with torch.no_grad():
            policy_kl = answer_logps(model, batch.mismatched, fast=self.fast)
            with self.reference.run(model) as ref_model:
                reference = answer_logps(ref_model, batch.answers, fast=self.fast)
                reference_kl = answer_logps(ref_model, batch.mismatched, fast=self.fast)
        return self.feedback_loss(policy, reference, (policy_kl - reference_kl).mean().clamp(min=0),
                                  batch.answers.desirable, check=self.check_pending and model.training)

    def feedback_loss(self, policy, reference, kl, desirable, check: bool = False) -> ObjectiveLoss:
        o = self.opts
        rho = policy - reference                                      # (N,)
        if check:
            self.check_start(rho, rho)
        kl = kl.detach()
        losses = torch.where(desirable, o.desirable_weight * (1 - torch.sigmoid(o.beta * (rho - kl))),
                             o.undesirable_weight * (1 - torch.sigmoid(o.beta * (kl - rho))))
        right = torch.where(desirable, rho > kl, rho < kl)
        metrics = {"kl": kl * rho.shape[0], "reward_accuracy": right.float().sum(),
                   "logps": policy.detach().sum()}
        return ObjectiveLoss(losses.sum(), rho.shape[0], metrics)
