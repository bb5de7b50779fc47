"""Speculative decoding: cheap guesses of the next tokens, verified by the model in one pass.

Two drafters: `PromptLookup` (tokens copied from the request's own text) and `DraftModel` (a
smaller model sharing the tokenizer).

Extraction and rewriting answers copy long runs of their prompt. When the last `n` tokens of a row
(prompt + answer so far) occurred earlier, the tokens that followed that occurrence are a cheap
guess of what comes next (Saxena 2023, "prompt lookup decoding"; transformers' `prompt_lookup_num_tokens`).
The engine feeds the row's newest token and its draft in one forward pass, keeps the longest prefix
of the draft the model itself would have chosen, plus the model's own next token: greedy output is
exactly plain decoding's, at the cost of one wider forward pass instead of several narrow ones.

A row whose drafts are mostly rejected pays for the wider passes and gains nothing, so each row
counts the draft tokens it was offered and accepted (its acceptance rate) and the verification passes
it paid for, and stops speculating when its passes accept fewer than `min_gain` tokens on average.
The measure is tokens per pass, not the acceptance rate: on a CPU at batch 1 a pass over 9 tokens
costs about what a pass over 1 does (bench/generate.py), so a draft of 8 with 25 % accepted still
wins twice over, while a pass that accepts nothing is a wasted step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.errors import UserError
from tunesmith.generation.batching import positions
from tunesmith.generation.cache import ModelCall, new_cache
from tunesmith.generation.sampling import greedy_ids

NGRAM_MAX = 3            # longest suffix searched for, in tokens (longer = more specific matches)
NGRAM_MIN = 1
JUDGE_AFTER = 4          # verification passes a row gets before its gain decides anything


@dataclass
class Speculator:
    """Settings every drafter shares: the longest draft, the accepted tokens per verification pass a row
    must keep averaging, the widest batch."""
    max_draft: int = 8
    min_gain: float = 0.5
    # Wider batches are compute-bound on a CPU: every drafted column costs a full token of work.
    max_batch: int = 4

    def budget(self, row) -> int:
        """Draft tokens `row` may get this step: none when switched off, never past max_tokens."""
        if not row.speculating:
            return 0
        return max(0, min(self.max_draft, row.max_tokens - row.sampled - 1))

    def record(self, row, drafted: int, accepted: int) -> None:
        """Count one verification; switch the row off when speculation has not paid."""
        row.drafted += drafted
        row.accepted_drafts += accepted
        row.verifications += 1
        if row.verifications >= JUDGE_AFTER and row.accepted_drafts < self.min_gain * row.verifications:
            row.speculating = False


@dataclass
class PromptLookup(Speculator):
    """Drafts up to `max_draft` tokens per step for greedy rows; off for a row below `min_gain`."""

    def draft(self, row) -> list[int]:
        """Tokens that followed the latest earlier occurrence of the row's last n tokens (n = 3, 2, 1)."""
        budget = self.budget(row)
        if budget <= 0:
            return []
        context = row.prompt_ids + row.generated
        end = len(context)
        for n in range(min(NGRAM_MAX, end - 1), NGRAM_MIN - 1, -1):
            tail = context[end - n:]
            first = tail[0]
            # Latest start s < end - n with context[s:s+n] == tail, and at least one token after it.
            for s in range(end - n - 1, -1, -1):
                if context[s] == first and context[s:s + n] == tail:
                    return context[s + n:s + n + budget]
        return []

def accepted_prefix(draft: list[int], chosen: list[int]) -> int:
    """How many leading draft tokens the model chose itself: chosen[j] is its token after draft[:j]."""
    n = 0
    while n < len(draft) and chosen[n] == draft[n]:
        n += 1
    return n


class DraftModel(Speculator):
    """Greedy drafts from a smaller model that shares the tokenizer (the base drafting for its merged
    fine-tune, or a smaller model of the family).

    Its KV cache mirrors the target's column for column: it is prefilled on the same left-padded
    prompts, fed every column the target is fed (drafted or not), and spliced, trimmed and masked
    with the same mask, so rows join and leave both caches together."""

    def __init__(self, model, max_draft: int = 4, min_gain: float = 0.5, max_batch: int = 4):
        super().__init__(max_draft, min_gain, max_batch)
        self.model = model.eval()
        self.call = ModelCall(model)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor):
        """The draft's cache of left-padded prompts ids, mask (B, T)."""
        cache = new_cache(self.model)
        self.call.last_logits(cache, input_ids=ids, attention_mask=mask, position_ids=positions(mask))
        return cache

    def feed(self, cache, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Append columns `ids` (B, t) to `cache`; `mask` (B, T + t) covers them. Greedy next tokens (B,)."""
        t = ids.shape[1]
        position_ids = mask[:, :-t].sum(1, keepdim=True) + mask[:, -t:].cumsum(1) - mask[:, -t:]   # (B, t)
        return greedy_ids(self.call.last_logits(cache, input_ids=ids, attention_mask=mask, position_ids=position_ids))

    def drafts(self, cache, mask: torch.Tensor, last: list[int], rows, pad: int) -> list[list[int]]:
        """Draft for every row with a budget, feeding the draft cache the columns the target will be fed:
        each row's newest token, then its draft, padded (masked) to the longest."""
        budgets = [self.budget(row) for row in rows]
        width = max(budgets)
        device = mask.device
        token = torch.tensor(last, device=device)[:, None]                                 # (B, 1)
        drafted: list[list[int]] = [[] for _ in rows]
        for j in range(width + 1):
            live = torch.tensor([j == 0 or j <= b for b in budgets], device=device)[:, None]
            mask = torch.cat([mask, live.to(mask.dtype)], dim=1)
            nxt = self.feed(cache, mask, token.masked_fill(~live, pad))                  # (B,)
            for i, b in enumerate(budgets):
                if j < b:
                    drafted[i].append(int(nxt[i]))
            token = nxt[:, None]
        return drafted


def check_same_vocabulary(tokenizer, draft_tokenizer, model_name: str, draft_name: str) -> None:
    """A draft model must spell tokens as the target does: a UserError naming both when it does not."""
    vocab, draft_vocab = tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if vocab != draft_vocab:
        differ = sum(1 for tok, i in vocab.items() if draft_vocab.get(tok) != i) + len(set(draft_vocab) - set(vocab))
        raise UserError(f"draft model '{draft_name}' has another vocabulary than '{model_name}' "
                        f"({len(draft_vocab)} vs {len(vocab)} tokens, {differ} differ)",
                        hint="draft with a model of the same family (the same tokenizer), or use prompt lookup")


def load_draft_model(name: str, tokenizer, target_name: str, dtype: str = "fp32"):
    """The draft model `name` (anything model.base accepts), after checking it spells tokens as `tokenizer`."""
    from tunesmith.models import load_model, load_tokenizer, resolve_base

    resolved = resolve_base(name)
    check_same_vocabulary(tokenizer, load_tokenizer(resolved), target_name, name)
    # It only ever runs forward: frozen, so that inference_precision can hold its weights in bf16.
    return load_model(resolved, dtype=dtype).eval().requires_grad_(False)
