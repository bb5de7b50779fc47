"""A mix-in source answered by the base model being tuned: self-distillation against forgetting.

    data:
      train:
        - {path: orders.jsonl, weight: 0.8}
        - {path: general, weight: 0.2, answers: base}

With `answers: base` the source's prompts are kept and each answer is the base model's own, sampled at
TEMPERATURE 1 (its own distribution, unsharpened) with the run's seed, before training starts. Replayed beside
the task, these teach the model to go on answering ordinary requests as it did, where answers written by
someone else teach it a new style. On the quickstart (150-question forgetting probe, docs/data.md), seeds 42
and 43: task only -0.100 / -0.153 general QA, +6.1 / +2.1 % general-text perplexity; the shipped general set as
written -0.107 / -0.133; its prompts answered by the base model at temperature 1 -0.013 / -0.020 and +0.1 /
+0.8 % (paired against task only +0.087 and +0.133), json_exact 1.000 / 0.950 (task only 1.000 / 1.000).
Sharpened answers cost perplexity: at temperature 0.7 +14.6 %, greedy (an earlier run) +26 %.

An answer cut off at MAX_NEW_TOKENS, or empty, is dropped (a cut answer would teach stopping mid-sentence);
the run says how many. Answers are cached under the tunesmith home, keyed by the model folder, the source's
content, the seed and the settings, so a second run (or a resumed one) does not generate them again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tunesmith.data.schema import Sample
from tunesmith.errors import ConfigError

TEMPERATURE = 1.0      # the base model's own distribution: 0.7 and greedy raised general-text perplexity
MAX_NEW_TOKENS = 256
BATCH = 64
CACHE_VERSION = 1

# Shown under a raised forgetting flag (eval's report.md, decide's report): what measurably helped.
HELP = ("What helped on the quickstart: mixing in the shipped general prompts answered by the base model itself, "
        "`data.train: [{path: YOUR_DATA, weight: 0.8}, {path: general, weight: 0.2, answers: base}]` "
        "(general-QA drop -0.100 -> -0.013, docs/data.md), or a lower learning rate.")


@dataclass
class Answered:
    samples: list[Sample]
    dropped_cut: int
    dropped_empty: int
    seconds: float
    cached: bool


def _cache_file(model_path: Path, samples: list[Sample], seed: int, precision: str) -> Path:
    from tunesmith.models.paths import tunesmith_home

    config = Path(model_path) / "config.json"
    stamp = config.stat().st_mtime_ns if config.is_file() else 0
    prompts = [s.prompt_messages() for s in samples]
    key = json.dumps([CACHE_VERSION, str(Path(model_path).resolve()), stamp, prompts, seed, precision, TEMPERATURE,
                      MAX_NEW_TOKENS], sort_keys=True)
    return tunesmith_home() / "cache" / "self_answers" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _check_chats(samples: list[Sample], source: str) -> None:
    bad = next((s for s in samples if s.kind != "chat"), None)
    if bad is not None:
        raise ConfigError(f"data.train: {source} has answers: base, but {bad.source} is a {bad.kind} example",
                          hint="answers: base rewrites the last answer of chat examples; drop it for this source")


def answered_by_base(samples: list[Sample], source: str, model_path: Path, tokenizer, *, seed: int,
                     precision: str) -> Answered:
    """`samples` with each last answer replaced by the base model's own (cached), cut-off ones dropped."""
    from tunesmith.io_utils import atomic_file

    _check_chats(samples, source)
    cache = _cache_file(model_path, samples, seed, precision)
    start = time.monotonic()
    if cache.is_file():
        replies, cached = json.loads(cache.read_text(encoding="utf-8")), True
    else:
        replies, cached = _generate(samples, model_path, tokenizer, seed=seed, precision=precision), False
        with atomic_file(cache) as fh:
            json.dump(replies, fh)
    kept = [replace(s, messages=[*s.prompt_messages(), {"role": "assistant", "content": text}])
            for s, (text, cut) in zip(samples, replies) if text.strip() and not cut]
    cut = sum(1 for _, c in replies if c)
    return Answered(kept, cut, len(samples) - len(kept) - cut, time.monotonic() - start, cached)


def _generate(samples: list[Sample], model_path: Path, tokenizer, *, seed: int, precision: str) -> list[list]:
    """[text, cut off] per sample: the base model's sampled reply to its prompt."""
    from tunesmith.generation import generate_tokens
    from tunesmith.models import load_model

    model = load_model(str(model_path)).eval()
    ids = generate_tokens(model, tokenizer, [s.prompt_messages() for s in samples], max_new_tokens=MAX_NEW_TOKENS,
                          batch_size=BATCH, temperature=TEMPERATURE, seed=seed, precision=precision)
    return [[tokenizer.decode(new, skip_special_tokens=True).strip(), len(new) >= MAX_NEW_TOKENS] for new in ids]
