"""Emulated fine-tuning (EFT; Mitchell et al. 2023, "An Emulator for Fine-Tuning Large Language Models
using Small Language Models"): decode a larger base model as if it had been fine-tuned like a small one.

At every step the next-token log-probabilities are

    log p = log p_large_base + beta * (log p_small_tuned - log p_small_base),   renormalised over the vocabulary

where small_tuned and small_base are one model with its adapter on and off (no second copy of the
small model). beta = 0 is the large base; beta = 1 adds the whole behaviour delta the fine-tune learnt.
The large model must share the small one's tokenizer. The engine keeps a KV cache for each of the
three passes, column for column under one mask, so rows join and leave all three together.
"""

from __future__ import annotations

import torch

from tunesmith.generation.cache import ModelCall, new_cache


def eft_logprobs(large: torch.Tensor, tuned: torch.Tensor, base: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """(B, V) logits of the three passes -> (B, V) normalised log-probs; `beta` a float or (B, 1).
    In float64: three log-softmaxes of ~-11 nats each, differenced and scaled, would lose fp32 digits."""
    large, tuned, base = large.double(), tuned.double(), base.double()
    lp = torch.log_softmax(large, -1) + beta * (torch.log_softmax(tuned, -1) - torch.log_softmax(base, -1))
    return torch.log_softmax(lp, -1)


class EmulatedFineTune:
    """The large base of an EFT engine and the default beta (a request may bring its own).
    `trace`, when a list, receives each step's combined log-probs (B, V) (tests check the formula)."""

    def __init__(self, large, beta: float = 1.0):
        self.large = large.eval()
        self.call = ModelCall(large)
        self.beta = beta
        self.trace: list | None = None

    def betas(self, rows, device) -> torch.Tensor:
        """(B, 1) each row's beta."""
        return torch.tensor([[self.beta if r.eft_beta is None else r.eft_beta] for r in rows], device=device,
                            dtype=torch.float64)

    def prefill(self, **inputs):
        """The large base's cache and last logits (B, V) for the prompts the tuned model was just prefilled on."""
        cache = new_cache(self.large)
        return cache, self.call.last_logits(cache, **inputs)

    def combine(self, rows, large: torch.Tensor, tuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        logprobs = eft_logprobs(large, tuned, base, self.betas(rows, tuned.device))
        if self.trace is not None:
            self.trace.append(logprobs)
        return logprobs
