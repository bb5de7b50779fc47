"""Mixing several training sources: `data.train` as a list of sources with weights or counts.

    data:
      train:
        - {path: orders.jsonl, weight: 0.8}
        - {path: general, weight: 0.2}     # the shipped general instruction set, against forgetting
        # or {path: general, weight: 0.2, answers: base}: its answers rewritten by the base model (self_answers.py)

Weights are shares of the mix. The first source (your task's data) is used whole and sets the size:
300 task examples at 0.8 make 375, of which 75 general ones; a later source with fewer examples than
its share is repeated (1,000 task examples at 0.8 take 250 general ones, the 144 shipped ones about
1.7 times). Sizing by the smallest source instead would silently leave task examples out. Counts
take that many examples of a source (repeating it when it has fewer), and a source with neither is
used whole. Weights and counts do not mix in one list. Examples are
drawn with the run's seed, so a run is reproducible; the drawn mix is what the validation split
and training see.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import MixSource
from tunesmith.errors import ConfigError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Named sources shipped with the package (see assets/general/README.md for origin and licence).
BUILTIN = {"general": ASSETS / "general" / "instructions.jsonl"}


def resolve_path(path: str) -> str:
    """A builtin name as its file; anything else unchanged (a file of that name wins over a builtin)."""
    if path in BUILTIN and not Path(path).exists():
        return str(BUILTIN[path])
    return path


def task_examples(samples: list, train=None) -> list:
    """The examples of `samples` that come from the task's own data: the pool the few-shot baselines
    draw their demonstrations from and the loop guard reads its limit from (a general-instruction
    demonstration teaches a prompting baseline nothing about the task). With a mix (`train`, the
    run's data.train, a list of sources), the first source: by the mix's convention the task, the
    later ones mix-ins against forgetting, shipped or your own. Otherwise every example not from a
    shipped set. All of them when that leaves none."""
    if isinstance(train, list) and len(train) > 1:
        first = resolve_path(train[0].path) + ":"
        own = [s for s in samples if s.source.startswith(first)]
    else:
        shipped = tuple(str(path) + ":" for path in BUILTIN.values())
        own = [s for s in samples if not s.source.startswith(shipped)]
    return own or samples


def source_paths(train) -> list[str]:
    if train is None:
        return []
    return [resolve_path(train)] if isinstance(train, str) else [resolve_path(s.path) for s in train]


@dataclass
class MixPart:
    path: str
    available: int
    taken: int
    weight: float | None = None
    count: int | None = None
    answers: str = "as_written"

    def as_dict(self, total: int) -> dict:
        return {"path": self.path, "available": self.available, "taken": self.taken,
                "share": round(self.taken / total, 4) if total else 0.0, "weight": self.weight, "count": self.count,
                "answers": self.answers}


def plan(sources: list[MixSource], sizes: list[int]) -> list[int]:
    """How many examples each source gives."""
    if sources[0].weight is not None:
        total_w = sum(s.weight for s in sources)
        shares = [s.weight / total_w for s in sources]
        size = sizes[0] / shares[0]
        return [sizes[0]] + [max(1, round(w * size)) for w in shares[1:]]
    return [s.count if s.count is not None else n for s, n in zip(sources, sizes)]


def draw(samples: list, k: int, rng: random.Random) -> list:
    """k of `samples` without repeats while they last, then whole repeats plus a draw for the rest."""
    if k <= len(samples):
        return rng.sample(samples, k)
    whole, rest = divmod(k, len(samples))
    return samples * whole + rng.sample(samples, rest)


def load_mix(sources: list[MixSource], fmt: str, seed: int, answer: Callable[[list, str], list] | None = None):
    """(samples of the mix, shuffled; its parts). Every source is loaded strictly, as data.train is. `answer`
    rewrites the answers of a source with `answers: base` (data/self_answers.py); without it (`data inspect`)
    they stay as written."""
    from tunesmith.data.load import load_samples

    loaded = []
    for s in sources:
        samples = load_samples(resolve_path(s.path), fmt if s.path not in BUILTIN else "auto")
        if samples and s.answers == "base" and answer is not None:
            samples = answer(samples, s.path)
        if not samples:
            raise ConfigError(f"data.train: source {s.path} holds no examples")
        loaded.append(samples)
    counts = plan(sources, [len(x) for x in loaded])
    rng = random.Random(seed)
    mixed, parts = [], []
    for s, samples, k in zip(sources, loaded, counts):
        mixed += draw(samples, k, rng)
        parts.append(MixPart(resolve_path(s.path), len(samples), k, s.weight, s.count, s.answers))
    rng.shuffle(mixed)
    return mixed, parts


def mix_line(parts: list[MixPart]) -> str:
    total = sum(p.taken for p in parts)
    return "data mix: " + ", ".join(f"{Path(p.path).name} {p.taken}/{p.available} ({p.taken / total:.0%})"
                                    + (", answers by the base model" if p.answers == "base" else "") for p in parts)


def describe_mix(cfg) -> list[MixPart]:
    """The parts a run config's data.train draws (one part for a single file)."""
    from tunesmith.errors import UserError

    train = cfg.data.train
    if not train:
        raise UserError("data.train is not set in this config")
    sources = train if isinstance(train, list) else [MixSource(path=train)]
    return load_mix(sources, cfg.data.format, cfg.train.seed)[1]
