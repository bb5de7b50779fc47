"""Preference objectives on pairs: DPO (sigmoid, IPO, hinge losses) and ORPO.

A micro-batch is a list of `Pair`s; chosen and rejected answers of all its pairs run through one
forward (objectives/sequences.py), interleaved [c0, r0, c1, r1, ...], and the loss is summed over
pairs (the trainer divides by the step's pair count). DPO also runs the reference (train/reference.py)
on the same batch under no_grad.

The losses follow the papers and match TRL's DPOTrainer / ORPOTrainer on the same tokens
(tests/train/test_preference_objectives.py). Per pair, with log-ratios
rho_c = log pi(c) - log ref(c), rho_r likewise, and delta = rho_c - rho_r:

    sigmoid  -(1 - eps) log s(beta delta) - eps log s(-beta delta)       (DPO; eps: label smoothing, cDPO)
    ipo      (delta / per-token - 1 / (2 beta))^2 with rho's divided by each answer's token count  (IPO, as TRL)
    hinge    max(0, 1 - beta delta)                                       (SLiC)
    orpo     NLL(c) / |c| - beta log s(log odds(c) - log odds(r)),  odds(y) = p / (1 - p), p = exp(mean token logp)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from tunesmith.data.lengths import fixed_max_len
from tunesmith.data.tokenize import Pair, pair_lengths, tokenize_pairs
from tunesmith.errors import ConfigError, UserError
from tunesmith.events import Message, StepMetrics
from tunesmith.train.attention import packed_attention_for
from tunesmith.train.attention import supports as attention_supports
from tunesmith.train.objective_options import DPOOptions, ORPOOptions
from tunesmith.train.objectives.base import Objective, ObjectiveLoss, refuse_records, register_objective
from tunesmith.train.objectives.sequences import AnswerBatch, answer_logps, collate_answers
from tunesmith.train.reference import Reference, drop_start_adapter, reference_for

LN2 = math.log(2.0)
START_TOLERANCE = 0.01


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0 without cancellation (the two forms trade places at -ln 2)."""
    return torch.where(x < -LN2, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ReferenceMismatch(UserError):
    pass


def need_pairs(samples, objective: str) -> None:
    refuse_records(samples, {"preference"}, f"objective '{objective}' trains on preference pairs (prompt, chosen, rejected)",
                   hint="use data in the preference or openai_preference format; `tunesmith data pairs` builds pairs "
                        "from an eval's predictions")


def check_start(beta: float, delta: torch.Tensor, logratios: torch.Tensor, reference: Reference) -> None:
    """Step 0: the policy must be the reference, so the sigmoid DPO loss -log s(beta delta) is ln 2."""
    start = float(-F.logsigmoid(beta * delta.detach()).mean())
    if abs(start - LN2) <= START_TOLERANCE:
        return
    raise ReferenceMismatch(
        f"step 0: the policy does not start at the reference: the sigmoid DPO loss is {start:.4f}, not ln 2 = "
        f"{LN2:.4f} (within {START_TOLERANCE}); policy and reference log-probs differ by up to "
        f"{float(logratios.abs().max()):.3f} nats. The reference is {reference.describe}. With a wrong "
        "reference the loss collapses towards 0 in the first steps and the rewards mean nothing",
        hint="when continuing from an SFT adapter, pass it as model.adapter with objective.reference: auto (it becomes "
             "the reference); objective.check_reference: false skips this check")


def displacement_watch(events, *, min_steps: int = 5, run: int = 3):
    """A StepMetrics listener that warns once when the chosen answers' reward keeps falling below 0:
    the loss is widening the margin by pushing both answers down (likelihood displacement)."""
    history: list[float] = []
    warned = False

    def watch(event):
        nonlocal warned
        if warned or not isinstance(event, StepMetrics) or "rewards_chosen" not in event.metrics:
            return
        history.append(event.metrics["rewards_chosen"])
        tail = history[-run:]
        if len(history) >= min_steps and all(x < 0 for x in tail) and tail == sorted(tail, reverse=True):
            warned = True
            events.emit(Message(
                f"step {event.step}: the chosen answers' reward keeps falling ({tail[-1]:+.3f}): the preference loss is "
                "widening the margin by making both answers less likely (likelihood displacement); try "
                "objective.sft_weight: 1.0, a lower train.lr, or a higher objective.beta", "warning"))
    return watch


@dataclass
class PairObjective(Objective):
    """What DPO and ORPO share: pair data, the batch, per-answer log-probs."""

    # The shipped DPO task (assets/preference) learns its style without collapsing at LoRA 2e-4 = 0.2 x 1e-3.
    lr_factor = 0.2

    opts: Any = None
    pad_id: int = 0
    flat: bool = True
    fast: bool = True

    @classmethod
    def lengths(cls, tokenizer, samples, data_cfg) -> list[int]:
        need_pairs(samples, cls.name)
        return pair_lengths(tokenizer, samples, data_cfg.system_prompt)

    @classmethod
    def tokenize(cls, tokenizer, samples, data_cfg):
        need_pairs(samples, cls.name)
        return tokenize_pairs(tokenizer, samples, max_len=fixed_max_len(data_cfg), system_prompt=data_cfg.system_prompt)

    @classmethod
    def check_config(cls, cfg) -> None:
        name = cfg.objective.name
        if cfg.data.train_on_inputs:
            raise ConfigError(f"data.train_on_inputs: objective '{name}' scores whole answers, never the prompt",
                              hint="set data.train_on_inputs=false (it applies to sft)")
        if cfg.data.overlong == "truncate":
            raise ConfigError(f"data.overlong=truncate: objective '{name}' drops a pair or answer longer than data.max_len "
                              "rather than cut it (a cut answer would make the comparison about length)",
                              hint="set data.overlong=drop and raise data.max_len to keep long examples")

    @classmethod
    def _settings(cls, prepared, tokenizer) -> dict:
        return {"pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                "fast": prepared.fast_loss,
                # One padding-free row per micro-batch where our packed attention keeps answers apart.
                "flat": prepared.fast_loss and attention_supports(prepared.model)}

    def collate(self, pairs: list[Pair]) -> AnswerBatch:
        answers = [a for p in pairs for a in (p.chosen, p.rejected)]
        return collate_answers(answers, flat=self.flat, pad_id=self.pad_id, n_units=len(pairs))

    def units(self, batch: AnswerBatch) -> int:
        return batch.n_units

    def tokens(self, batch: AnswerBatch) -> tuple[int, int]:
        return batch.real_tokens, batch.input_ids.numel()

    def context(self, model):
        return packed_attention_for(model) if self.fast else contextlib.nullcontext()


@dataclass
class ReferenceObjective(PairObjective):
    """An objective measured against a reference (DPO, KTO): which one, the step-0 check, and the
    reference's needs around the run."""

    reference: Reference | None = None
    check_pending: bool = field(default=False, repr=False)

    @classmethod
    def for_run(cls, prepared, tokenizer, data_cfg, options=None):
        options = options or cls.options()
        return cls(opts=options, reference=reference_for(prepared, options.reference), **cls._settings(prepared, tokenizer))

    def started(self, step: int) -> None:
        self.check_pending = step == 0 and self.opts.check_reference

    def context(self, model):
        stack = contextlib.ExitStack()
        stack.enter_context(super().context(model))
        if self.reference is not None and self.reference.copy is not None and self.fast:
            stack.enter_context(packed_attention_for(self.reference.copy))
        # The frozen start adapter is the reference only while training; the saved folder holds the trained one.
        stack.callback(drop_start_adapter, model)
        return stack

    def check_start(self, delta: torch.Tensor, logratios: torch.Tensor) -> None:
        self.check_pending = False
        check_start(self.opts.beta, delta, logratios, self.reference)


@register_objective
@dataclass
class DPO(ReferenceObjective):
    name = "dpo"
    summary = "direct preference optimisation against a reference (sigmoid / ipo / hinge losses)"
    data = "pairs: preference, openai_preference"
    options: ClassVar = DPOOptions
    metric_names = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy",
                    "logps_chosen", "logps_rejected")

    def listeners(self, events) -> list:
        return [displacement_watch(events)]

    def logps(self, model, batch: AnswerBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy, reference) summed answer log-probs, (2P,) each, chosen and rejected interleaved."""
        policy = answer_logps(model, batch, fast=self.fast)
        with torch.no_grad(), self.reference.run(model) as ref_model:
            reference = answer_logps(ref_model, batch, fast=self.fast)
        return policy, reference

    def loss(self, model, batch: AnswerBatch) -> ObjectiveLoss:
        policy, reference = self.logps(model, batch)
        return self.pair_loss(policy, reference, batch.n_targets, check=self.check_pending and model.training)

    def pair_loss(self, policy, reference, n_targets, check: bool = False) -> ObjectiveLoss:
        """Loss and metrics from interleaved (2P,) log-probs and answer token counts."""
        o = self.opts
        pc, pr = policy[0::2], policy[1::2]
        rho_c, rho_r = pc - reference[0::2], pr - reference[1::2]
        delta = rho_c - rho_r                                         # (P,)
        if check:
            self.check_start(delta, torch.cat([rho_c, rho_r]).detach())
        if o.loss_type == "sigmoid":
            losses = -(1 - o.label_smoothing) * F.logsigmoid(o.beta * delta) - o.label_smoothing * F.logsigmoid(-o.beta * delta)
        elif o.loss_type == "ipo":
            per_token = rho_c / n_targets[0::2].clamp(min=1) - rho_r / n_targets[1::2].clamp(min=1)
            losses = (per_token - 1 / (2 * o.beta)) ** 2
        else:
            losses = torch.relu(1 - o.beta * delta)
        if o.sft_weight:
            losses = losses + o.sft_weight * (-pc / n_targets[0::2].clamp(min=1))
        rc, rr = o.beta * rho_c.detach(), o.beta * rho_r.detach()
        metrics = {"rewards_chosen": rc.sum(), "rewards_rejected": rr.sum(), "reward_margin": (rc - rr).sum(),
                   "reward_accuracy": (rc > rr).float().sum(), "logps_chosen": pc.detach().sum(),
                   "logps_rejected": pr.detach().sum()}
        return ObjectiveLoss(losses.sum(), delta.shape[0], metrics)

@register_objective
@dataclass
class ORPO(PairObjective):
    name = "orpo"
    summary = "odds-ratio preference optimisation: SFT on chosen plus an odds-ratio term, no reference model"
    data = "pairs: preference, openai_preference"
    options: ClassVar = ORPOOptions
    metric_names = ("nll_chosen", "log_odds_ratio", "reward_accuracy", "logps_chosen", "logps_rejected")

    @classmethod
    def for_run(cls, prepared, tokenizer, data_cfg, options=None) -> ORPO:
        return cls(opts=options or ORPOOptions(), **cls._settings(prepared, tokenizer))

    def loss(self, model, batch: AnswerBatch) -> ObjectiveLoss:
        return self.pair_loss(answer_logps(model, batch, fast=self.fast), batch.n_targets)

    def pair_loss(self, policy, n_targets) -> ObjectiveLoss:
        mean = policy / n_targets.clamp(min=1)                        # (2P,) mean token log-prob
        mc, mr = mean[0::2], mean[1::2]
        log_odds = (mc - mr) - (log1mexp(mc) - log1mexp(mr))          # log odds(y) = log p - log(1 - p)
        ratio = F.logsigmoid(log_odds)
        nll = -mc
        losses = nll - self.opts.beta * ratio
        metrics = {"nll_chosen": nll.detach().sum(), "log_odds_ratio": log_odds.detach().sum(),
                   "reward_accuracy": (mc > mr).float().sum(), "logps_chosen": policy[0::2].detach().sum(),
                   "logps_rejected": policy[1::2].detach().sum()}
        return ObjectiveLoss(losses.sum(), mc.shape[0], metrics)
