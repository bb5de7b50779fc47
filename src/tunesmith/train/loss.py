"""Next-token loss computed only where it counts.

The vocabulary projection is the most expensive matmul of a small model (SmolLM2: 49k x 576) and
most positions carry no target (prompts, padding). So the decoder runs over all tokens but the
lm_head and cross-entropy run only on target positions, in chunks, each recomputed in backward so
the (targets x vocab) logits never all live at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunesmith.data.tokenize import IGNORE

CHUNK = 2048


def _head_ce(head, hidden, targets):
    logits = head(hidden).float()  # (n, V); fp32 log-softmax regardless of autocast
    return F.cross_entropy(logits, targets, reduction="sum")


def split_causal_lm(model):
    """(decoder, lm_head) of a causal LM, looking through a peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(inner, "get_decoder") or inner.get_output_embeddings() is None:
        return None, None
    return inner.get_decoder(), inner.get_output_embeddings()


class CausalLMLoss(torch.nn.Module):
    """Wraps a causal LM so forward returns (sum of target-token NLL, number of targets).

    Returning the sum (not the mean) lets the trainer normalise by the target count of the whole
    optimizer step across micro-batches and processes.
    """

    def __init__(self, model, fast: bool = True):
        super().__init__()
        self.model = model
        decoder, head = split_causal_lm(model) if fast else (None, None)
        self.fast = decoder is not None

    def forward(self, input_ids, position_ids, targets):
        mask = targets != IGNORE
        n = mask.sum()
        if self.fast:
            decoder, head = split_causal_lm(self.model)
            hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            h, t = hidden[mask], targets[mask]   # (n, H), (n,)
            total = hidden.new_zeros((), dtype=torch.float32)
            for start in range(0, h.shape[0], CHUNK):
                hc, tc = h[start:start + CHUNK], t[start:start + CHUNK]
                if torch.is_grad_enabled() and h.shape[0] > CHUNK:
                    total = total + checkpoint(_head_ce, head, hc, tc, use_reentrant=False)
                else:
                    total = total + _head_ce(head, hc, tc)
            return total, n
        logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        # Models that prepend virtual tokens return longer logits; the real tokens are at the end.
        logits = logits[:, -input_ids.shape[1]:]
        return F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum"), n
