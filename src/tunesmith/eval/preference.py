"""Held-out preference accuracy by implicit reward (DPO's reward, read off the trained model).

For a pair (prompt, chosen, rejected) the implicit reward of an answer y is

    r(y) = log p_policy(y | prompt) - log p_reference(y | prompt)

(DPO's reward without its beta, which scales every reward alike and cannot change a comparison).
The policy prefers the chosen answer when r(chosen) > r(rejected); preference accuracy is the share
of pairs where it does, and the margin is r(chosen) - r(rejected). The reference is the policy's
starting point: for an adapter, the same weights with the adapter switched off.

The log-probs are summed over the answer's tokens exactly as training sees them: the conversation
rendered with the chat template, the assistant turn's tokens (its end-of-turn token included)
scored, the prompt tokens not. Length is not normalised (DPO's reward is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.schema import Sample
from tunesmith.data.tokenize import tokenize_answer
from tunesmith.eval import stats
from tunesmith.train.precision import inference_precision

Item = tuple[list[int], list[bool]]   # token ids, and which positions are scored targets


def answer_item(tokenizer, prompt: list[dict], answer: str, system_prompt: str | None = None) -> Item:
    """Token ids of prompt + answer as training renders them (data.tokenize.tokenize_answer, the same
    tokens DPO trains on), with the answer's tokens marked. Only the final assistant turn is the
    answer: earlier assistant turns of a multi-turn prompt are context."""
    item = tokenize_answer(tokenizer, prompt, answer, system_prompt)
    return item.ids, [j >= item.start for j in range(len(item.ids))]


def pair_items(tokenizer, pairs: list[Sample], system_prompt: str | None = None) -> list[Item]:
    """Two items per pair, chosen then rejected: [c0, r0, c1, r1, ...]."""
    items = []
    for s in pairs:
        items.append(answer_item(tokenizer, s.messages, s.chosen, system_prompt))
        items.append(answer_item(tokenizer, s.messages, s.rejected, system_prompt))
    return items


@torch.no_grad()
def sequence_logps(model, items: list[Item], *, batch_size: int = 8, precision: str = "fp32") -> list[float]:
    """Summed log-probability of the scored tokens of each item, each token given all before it.

    Items are batched longest first with right padding; each row's scored positions are gathered
    before the log-softmax, so memory holds (scored tokens, vocab) per row, not (batch, width, vocab).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda k: -len(items[k][0]))
    out = [0.0] * len(items)
    was_training = model.training
    model.eval()
    try:
        with inference_precision(model, precision):
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(items[k][0]) for k in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                attn = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, k in enumerate(chunk):
                    seq = items[k][0]
                    ids[r, :len(seq)] = torch.tensor(seq)
                    attn[r, :len(seq)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
                # Prompt tuning prepends its virtual tokens' logits; the last `width` positions are the input's.
                logits = logits[:, -width:]
                for r, k in enumerate(chunk):
                    seq, scored = items[k]
                    # Position t's token is predicted by the logits at t - 1 (position 0 is never a target).
                    pos = torch.tensor([t for t in range(1, len(seq)) if scored[t]], dtype=torch.long, device=device)
                    if len(pos) == 0:
                        continue
                    rows = logits[r, pos - 1].float()                      # (scored, vocab)
                    target = ids[r, pos].to(device).unsqueeze(1)           # (scored, 1)
                    out[k] = (rows.gather(1, target).squeeze(1) - torch.logsumexp(rows, dim=-1)).sum().item()
                del logits
    finally:
        model.train(was_training)
    return out


@dataclass
class PairScore:
    policy_chosen: float
    policy_rejected: float
    reference_chosen: float
    reference_rejected: float

    @property
    def reward_chosen(self) -> float:
        return self.policy_chosen - self.reference_chosen

    @property
    def reward_rejected(self) -> float:
        return self.policy_rejected - self.reference_rejected

    @property
    def margin(self) -> float:
        return self.reward_chosen - self.reward_rejected

    @property
    def correct(self) -> bool:
        return self.reward_chosen > self.reward_rejected

    def as_dict(self) -> dict:
        return {"logp": {"policy_chosen": self.policy_chosen, "policy_rejected": self.policy_rejected,
                         "reference_chosen": self.reference_chosen, "reference_rejected": self.reference_rejected},
                "reward_chosen": self.reward_chosen, "reward_rejected": self.reward_rejected,
                "margin": self.margin, "correct": self.correct}


def pair_scores(policy: list[float], reference: list[float]) -> list[PairScore]:
    """PairScores from two `sequence_logps` results over `pair_items` (chosen, rejected interleaved)."""
    return [PairScore(policy[i], policy[i + 1], reference[i], reference[i + 1]) for i in range(0, len(policy), 2)]


def summarize(scores: list[PairScore], seed: int = 0) -> dict:
    """Accuracy (Wilson 95 % interval), mean margin (bootstrap interval) and the two log-prob-only
    accuracies: what the policy alone and the reference alone prefer, ignoring the other."""
    correct = [1.0 if s.correct else 0.0 for s in scores]
    margins = [s.margin for s in scores]
    return {"n": len(scores), "accuracy": stats.mean(correct), "accuracy_ci95": list(stats.interval(correct)),
            "margin_mean": stats.mean(margins), "margin_ci95": list(stats.bootstrap_interval(margins, seed=seed)),
            "reward_chosen_mean": stats.mean([s.reward_chosen for s in scores]),
            "reward_rejected_mean": stats.mean([s.reward_rejected for s in scores]),
            "ties": sum(1 for s in scores if s.reward_chosen == s.reward_rejected),
            "policy_logp_accuracy": stats.mean([1.0 if s.policy_chosen > s.policy_rejected else 0.0 for s in scores]),
            "reference_logp_accuracy": stats.mean([1.0 if s.reference_chosen > s.reference_rejected else 0.0
                                                   for s in scores])}
