"""Lengths read from the data: `data.max_len: auto` and `eval.max_new_tokens: auto`.

A fixed 512-token row silently drops every longer example, and a fixed 128-token generation budget
cuts every longer answer; both are the wrong number for most datasets. Here both come from the data:

- `resolve_max_len`: the smallest multiple of 64 that holds at least 99 % of the training examples
  (as the run's objective measures them), capped by the model's context;
- `resolve_max_new_tokens`: the longest reference answer of the eval set plus a margin, rounded up
  to a multiple of 16, capped at 2048 tokens and by the model's context.

An explicit integer is used as it is. `model_context` reads the context from a model's config (or
a loaded model) and the tokenizer's `model_max_length` where that is a real limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROW_MULTIPLE = 64            # max_len: rows a multiple of 64 tokens (kernels and packing like round sizes)
COVERAGE = 0.99              # max_len: the share of training examples that must fit
NO_DATA_MAX_LEN = 512        # max_len: with no training examples to measure (the run fails on that anyway)
NEW_TOKENS_MULTIPLE = 16     # max_new_tokens: rounded up to a multiple of 16
NEW_TOKENS_CAP = 2048        # max_new_tokens: never more than this from `auto`
NO_REFERENCE_NEW_TOKENS = 256  # max_new_tokens: no reference answers to measure (code tasks only, raw text)
CODE_NEW_TOKENS = 512        # max_new_tokens: at least this for programs (pass@k has no reference answers)
# transformers puts 1e30 in model_max_length when a tokenizer does not know its model's limit.
_SANE_CONTEXT = 10_000_000


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, math.ceil(n / multiple) * multiple)


def _sane(value) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _SANE_CONTEXT else None


def model_context(config=None, tokenizer=None) -> int | None:
    """Tokens the model can attend over: the smaller of `config.max_position_embeddings` (a model's
    config, or a loaded model, whose `.config` is read) and the tokenizer's `model_max_length`, each
    where it is a real number; None when neither says."""
    config = getattr(config, "config", config)
    found = [_sane(getattr(config, "max_position_embeddings", None)), _sane(getattr(tokenizer, "model_max_length", None))]
    found = [n for n in found if n is not None]
    return min(found) if found else None


def context_of_folder(path, tokenizer=None) -> int | None:
    """`model_context` of a model folder (config.json), without loading its weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError):   # no readable config: the tokenizer alone says
        config = None
    return model_context(config, tokenizer)


# --- data.max_len ---------------------------------------------------------------------------------

@dataclass
class MaxLen:
    """What `data.max_len` resolved to, and how much of the training data it holds."""

    setting: int | str                 # as configured: an integer, or "auto"
    resolved: int                      # the row length the run uses
    examples: int = 0                  # training examples measured (auto only)
    longer: int = 0                    # ... of them longer than `resolved`
    p99: int | None = None             # 99th-percentile length (the length 99 % of examples fit in)
    longest: int | None = None
    context: int | None = None         # the model's context, the cap
    capped: bool = False               # the context, not the data, set `resolved`

    @property
    def auto(self) -> bool:
        return self.setting == "auto"

    @property
    def coverage(self) -> float | None:
        """Share of the measured training examples that fit in `resolved`."""
        return None if not self.examples else (self.examples - self.longer) / self.examples

    def as_dict(self) -> dict:
        out = {"setting": self.setting, "resolved": self.resolved}
        if self.auto:
            out.update(coverage=None if self.coverage is None else round(self.coverage, 4), examples=self.examples,
                       longer=self.longer, p99=self.p99, longest=self.longest, context=self.context, capped=self.capped)
        return out

    def describe(self) -> str:
        """For the run's data line: 'data.max_len: auto = 768 (fits 99.7 % of 300 training examples)'."""
        if not self.auto:
            return f"data.max_len: {self.resolved}"
        if not self.examples:
            return f"data.max_len: auto = {self.resolved} (no training examples to measure)"
        why = f", capped by the model's context of {self.context} tokens" if self.capped else ""
        return (f"data.max_len: auto = {self.resolved} (fits {self.coverage:.1%} of {self.examples} training "
                f"examples; 99th percentile {self.p99} tokens{why})")

    def warning(self, overlong: str = "drop") -> str | None:
        """The loud line when more than 1 % of the training examples still do not fit (the context
        bites), with the fix; None otherwise."""
        if not self.auto or self.coverage is None or self.coverage >= COVERAGE:
            return None
        fate = "truncated" if overlong == "truncate" else "dropped"
        return (f"data.max_len: auto is capped by the model's context ({self.context} tokens): {self.longer} of "
                f"{self.examples} training examples ({1 - self.coverage:.1%}; longest {self.longest} tokens) do not "
                f"fit and will be {fate}. Fix: shorten or split them (`tunesmith data clean --max-tokens "
                f"{self.context}` removes them; `tunesmith data inspect` shows the lengths)"
                + (", or set data.overlong: truncate to keep their beginnings" if overlong == "drop" else "")
                + ", or use a base model with a longer context.")


def fixed_max_len(data_cfg) -> int:
    """`data_cfg.max_len` as the number tokenizing and packing need; "auto" here means the caller
    skipped the resolution a run does first (`tunesmith.pipeline.resolve_data_max_len`)."""
    if data_cfg.max_len == "auto":
        from tunesmith.errors import ConfigError

        raise ConfigError("data.max_len is 'auto', which is resolved from the training data before tokenizing",
                          hint="call tunesmith.pipeline.resolve_data_max_len(cfg, objective, tokenizer, samples) "
                               "first (a run does), or set data.max_len to a number")
    return data_cfg.max_len


def resolve_max_len(setting: int | str, lengths: list[int] | None = None, context: int | None = None, *,
                    coverage: float = COVERAGE, multiple: int = ROW_MULTIPLE) -> MaxLen:
    """`data.max_len` for a run. An integer is kept as it is. "auto": the smallest multiple of
    `multiple` that holds at least `coverage` of `lengths` (one per training example, as the
    objective compares them with max_len), no more than `context`."""
    if setting != "auto":
        return MaxLen(int(setting), int(setting))
    if not lengths:
        fallback = min(NO_DATA_MAX_LEN, context) if context else NO_DATA_MAX_LEN
        return MaxLen("auto", fallback, context=context)
    ordered = sorted(lengths)
    # The k-th shortest example, k = ceil(coverage * n): at least `coverage` of the examples are no longer.
    k = max(1, math.ceil(coverage * len(ordered) - 1e-9))
    p99 = ordered[k - 1]
    resolved = _round_up(p99, multiple)
    capped = context is not None and resolved > context
    if capped:
        resolved = context
    longer = sum(n > resolved for n in ordered)
    return MaxLen("auto", resolved, examples=len(ordered), longer=longer, p99=p99, longest=ordered[-1],
                  context=context, capped=capped)


# --- eval.max_new_tokens --------------------------------------------------------------------------

@dataclass
class NewTokens:
    """What `eval.max_new_tokens` resolved to."""

    setting: int | str
    resolved: int
    longest_reference: int | None = None   # tokens of the longest reference answer (auto only)
    references: int = 0
    cap: int | None = None                 # min(NEW_TOKENS_CAP, the model's context)
    capped: bool = False

    @property
    def auto(self) -> bool:
        return self.setting == "auto"

    def as_dict(self) -> dict:
        return {"setting": self.setting, "resolved": self.resolved, "longest_reference": self.longest_reference,
                "references": self.references, "cap": self.cap, "capped": self.capped}


def new_tokens_budget(longest: int) -> int:
    """The margin over the longest reference: 25 % more or 16 tokens more, whichever is larger,
    rounded up to a multiple of 16 (a model that answers a little longer than the reference is not cut)."""
    return _round_up(max(math.ceil(1.25 * longest), longest + 16), NEW_TOKENS_MULTIPLE)


def resolve_max_new_tokens(setting: int | str, reference_lengths: list[int] | None = None,
                           context: int | None = None) -> NewTokens:
    """`eval.max_new_tokens` for an evaluation. An integer is kept as it is. "auto": the
    `new_tokens_budget` of the longest reference answer (token counts in `reference_lengths`), at
    most NEW_TOKENS_CAP and the model's `context`; NO_REFERENCE_NEW_TOKENS when there is none."""
    if setting != "auto":
        return NewTokens(int(setting), int(setting))
    cap = min(NEW_TOKENS_CAP, context) if context else NEW_TOKENS_CAP
    if not reference_lengths:
        return NewTokens("auto", min(NO_REFERENCE_NEW_TOKENS, cap), cap=cap)
    longest = max(reference_lengths)
    want = new_tokens_budget(longest)
    return NewTokens("auto", min(want, cap), longest_reference=longest, references=len(reference_lengths),
                     cap=cap, capped=want > cap)
