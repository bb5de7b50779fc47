"""Next-token loss computed only where it counts, with a fused linear + cross-entropy.

The vocabulary projection is the most expensive matmul of a small model (SmolLM2: 49k x 576) and
many positions carry no target (prompts, padding). So the decoder runs over all tokens but the
lm_head and cross-entropy run only on target positions.

`LinearCrossEntropy` goes further: per chunk of targets it computes the logits, the loss, and at
once the gradient (softmax - onehot) projected back to the hidden states (and to the head weight
when it trains). The (targets x vocab) logits exist for one chunk at a time, are never stored for
backward, and nothing is recomputed; backward only scales the saved gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.data.tokenize import IGNORE
from tunesmith.models.adapters import unwrap
from tunesmith.train import vocab_chunk

CHUNK = 1024  # (1024 x 49k vocab) fp32 logits = 200 MB live at a time


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, t_i) with gradients computed in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk):
        needs_h, needs_w = hidden.requires_grad, weight.requires_grad
        h = hidden.detach().to(compute_dtype)
        w = weight.detach().to(compute_dtype)
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], targets[start:start + chunk]
            probs, target, lse = vocab_chunk.softmax(hc, w, tc)    # (n, V) fp32, (n,), (n,)
            total += (lse - target).sum()
            if needs_h or needs_w:
                probs[torch.arange(tc.shape[0], device=tc.device), tc] -= 1.0
                g = vocab_chunk.in_dtype(probs, compute_dtype)   # d(sum CE)/d(logits)
                if needs_h:
                    grad_h[start:start + chunk] = (g @ w).to(hidden.dtype)
                if needs_w:
                    grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (needs_h, needs_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        needs_h, needs_w = ctx.has
        grad_h = saved.pop(0) * grad_out if needs_h else None
        grad_w = (saved.pop(0) * grad_out).to(ctx.weight_dtype) if needs_w else None
        return grad_h, grad_w, None, None, None


def linear_cross_entropy(hidden, weight, targets, chunk: int = CHUNK):
    """Sum of CE over rows of `hidden` (n, d) against `targets` (n,), in autocast's dtype if active."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return LinearCrossEntropy.apply(hidden, weight, targets, dtype, chunk)


def split_causal_lm(model):
    """(decoder, lm_head) of a causal LM, looking through a peft wrapper."""
    inner = unwrap(model)
    if not hasattr(inner, "get_decoder") or inner.get_output_embeddings() is None:
        return None, None
    return inner.get_decoder(), inner.get_output_embeddings()


def _plain_head(head) -> bool:
    # An adapted or quantized head (LoRA on lm_head, bnb) must run its own forward.
    return type(head) is torch.nn.Linear and head.bias is None


def causal_lm_nll(model, input_ids, position_ids, targets, fast: bool = True):
    """(sum of target-token NLL, number of targets) of a causal LM on (R, L) rows.

    The sum (not the mean) lets the trainer normalise by the target count of the whole optimizer
    step across micro-batches and processes. `fast`: run the decoder alone and project only the
    target positions (the model's own forward is used when it has no separable decoder and head,
    or when the method changes the forward: virtual tokens, prefixes).
    """
    mask = targets != IGNORE                     # (R, L)
    n = mask.sum()
    decoder, head = split_causal_lm(model) if fast else (None, None)
    if decoder is not None:
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state  # (R, L, H)
        h, t = hidden[mask], targets[mask]   # (n, H), (n,)
        if _plain_head(head):
            return linear_cross_entropy(h, head.weight, t), n
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, h.shape[0], CHUNK):
            logits = head(h[start:start + CHUNK]).float()
            total = total + F.cross_entropy(logits, t[start:start + CHUNK], reduction="sum")
        return total, n
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits  # (R, P + L, vocab), P virtual tokens
    # Models that prepend virtual tokens return longer logits; the real tokens are at the end.
    logits = logits[:, -input_ids.shape[1]:]
    return F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum"), n


class LinearTokenLogp(torch.autograd.Function):
    """log softmax(h_i @ W^T)[t_i] per row, for a frozen head W, with d/dh computed in the forward pass.

    A preference loss weighs each sequence's log-prob differently, so the per-token values are
    needed (not their sum as in `LinearCrossEntropy`); each depends only on its own row, so the
    gradient is saved per row, (onehot - softmax) @ W, and backward scales it by grad_out.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk):
        needs_h = hidden.requires_grad
        h = hidden.detach().to(compute_dtype)
        w = weight.detach().to(compute_dtype)
        out = torch.empty(h.shape[0], dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if needs_h else None
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], targets[start:start + chunk]
            probs, target, lse = vocab_chunk.softmax(hc, w, tc)    # (n, V) fp32, (n,), (n,)
            out[start:start + chunk] = target - lse
            if needs_h:
                g = probs.neg_()                                # -softmax ...
                g[torch.arange(tc.shape[0], device=tc.device), tc] += 1.0   # ... + onehot = d logp / d logits
                grad_h[start:start + chunk] = (vocab_chunk.in_dtype(g, compute_dtype) @ w).to(hidden.dtype)
        if needs_h:
            ctx.save_for_backward(grad_h)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_out[:, None].to(grad_h.dtype), None, None, None, None


def target_logps(model, input_ids, position_ids, targets, fast: bool = True) -> torch.Tensor:
    """(n,) float32 log-probability of each target token of (R, L) rows, in row-major order of the
    positions where `targets` is not IGNORE; differentiable. The same two paths as `causal_lm_nll`:
    decoder + target-only head, or the model's own forward."""
    mask = targets != IGNORE                     # (R, L)
    t = targets[mask]                            # (n,)
    decoder, head = split_causal_lm(model) if fast else (None, None)
    if decoder is not None:
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state  # (R, L, H)
        h = hidden[mask]                         # (n, H)
        if _plain_head(head) and not head.weight.requires_grad:
            device = h.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
            with torch.autocast(device, enabled=False):
                return LinearTokenLogp.apply(h, head.weight, t, dtype, CHUNK)
        parts = [head(h[s:s + CHUNK]).float().log_softmax(-1).gather(1, t[s:s + CHUNK, None]).squeeze(1)
                 for s in range(0, h.shape[0], CHUNK)]
        return torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits  # (R, P + L, V)
    logits = logits[:, -input_ids.shape[1]:][mask].float()     # (n, V): virtual tokens' logits dropped
    return logits.log_softmax(-1).gather(1, t[:, None]).squeeze(1)


class CausalLMLoss(torch.nn.Module):
    """A causal LM whose forward returns (sum of target-token NLL, number of targets): `causal_lm_nll`
    as a module (the SFT objective calls the function; tests and the throughput bench use this)."""

    def __init__(self, model, fast: bool = True):
        super().__init__()
        self.model = model
        self.fast = fast and split_causal_lm(model)[0] is not None

    def forward(self, input_ids, position_ids, targets):
        return causal_lm_nll(self.model, input_ids, position_ids, targets, fast=self.fast)
