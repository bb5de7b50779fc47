"""Samples to token ids with next-token targets, ready to pack.

Targets are shifted per example (target[t] = label[t+1], last = -100) before packing, so the last
token of one example never learns to predict the first token of the next one in a packed row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.data.schema import Sample
from tunesmith.data.templates import assistant_spans, render

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE for t in self.targets)


@dataclass
class TokenizeStats:
    examples: int = 0
    dropped_overlong: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    target_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "lengths"}


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _shift(labels: list[int]) -> list[int]:
    return labels[1:] + [IGNORE]


def tokenize_sample(tokenizer, sample: Sample, *, train_on_inputs: bool = False,
                    system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """Return (input_ids, labels) for one sample; labels are -100 outside the trained spans."""
    if sample.kind == "text":
        ids = tokenizer(sample.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        return ids, list(ids)
    messages = _conversation(sample, system_prompt)
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if train_on_inputs:
        return ids, list(ids)
    labels = [IGNORE] * len(ids)
    for j, (s, e) in enumerate(enc["offset_mapping"]):
        if e > s and any(a <= s < b for a, b in spans):
            labels[j] = ids[j]
    return ids, labels


def _conversation(sample: Sample, system_prompt: str | None) -> list[dict]:
    messages = with_system(sample.messages, system_prompt)
    if sample.kind == "preference":
        messages = messages + [{"role": "assistant", "content": sample.chosen}]
    return messages


def token_lengths(tokenizer, samples: list[Sample], system_prompt: str | None = None) -> list[int]:
    """len(input_ids) that `tokenize_sample` gives each sample, computed in one batched tokenizer call
    (no offsets, no masks): what `inspect` and `clean`'s length filters need on large files."""
    texts = [s.text if s.kind == "text" else render(tokenizer, _conversation(s, system_prompt)) for s in samples]
    if not texts:
        return []
    chat = [i for i, s in enumerate(samples) if s.kind != "text"]
    raw = [i for i, s in enumerate(samples) if s.kind == "text"]
    out = [0] * len(samples)
    for idx, special in ((chat, False), (raw, True)):
        if idx:
            enc = tokenizer([texts[i] for i in idx], add_special_tokens=special)["input_ids"]
            eos = 1 if special and tokenizer.eos_token_id is not None else 0
            for i, ids in zip(idx, enc):
                out[i] = len(ids) + eos
    return out


def prompt_ids(tokenizer, messages: list[dict], system_prompt: str | None = None) -> list[int]:
    text = render(tokenizer, with_system(messages, system_prompt), generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_all(tokenizer, samples: list[Sample], *, max_len: int, overlong: str = "drop",
                 train_on_inputs: bool = False, system_prompt: str | None = None) -> tuple[list[Tokenized], TokenizeStats]:
    stats = TokenizeStats()
    out: list[Tokenized] = []
    for sample in samples:
        ids, labels = tokenize_sample(tokenizer, sample, train_on_inputs=train_on_inputs, system_prompt=system_prompt)
        if len(ids) > max_len:
            if overlong == "drop":
                stats.dropped_overlong += 1
                continue
            ids, labels = ids[:max_len], labels[:max_len]
            stats.truncated += 1
        example = Tokenized(ids, _shift(labels))
        if example.n_targets == 0:
            stats.dropped_no_target += 1
            continue
        out.append(example)
        stats.examples += 1
        stats.tokens += len(ids)
        stats.target_tokens += example.n_targets
        stats.lengths.append(len(ids))
    return out, stats


# --- answers scored on their own: preference pairs and unpaired feedback ---------------------------

@dataclass
class Answer:
    """A prompt and one answer as token ids: `ids[start:]` is the answer (its end-of-turn token
    included), each predicted from the tokens before it; nothing after the answer is kept."""

    ids: list[int]
    start: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_targets(self) -> int:
        return len(self.ids) - self.start


@dataclass
class Pair:
    chosen: Answer
    rejected: Answer

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


@dataclass
class Feedback:
    """Unpaired feedback (KTO): one answer and whether it is desirable."""

    answer: Answer
    desirable: bool

    def __len__(self) -> int:
        return len(self.answer)


def tokenize_answer(tokenizer, prompt: list[dict], answer: str, system_prompt: str | None = None) -> Answer:
    """The conversation `prompt` + `answer` rendered as training renders it, the final assistant
    turn's tokens as the answer. Earlier assistant turns of a multi-turn prompt are context."""
    messages = with_system([*prompt, {"role": "assistant", "content": answer}], system_prompt)
    text, spans = assistant_spans(tokenizer, messages)
    begin, end = spans[-1]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    # The first token that reaches into the answer starts it (a token merged across the boundary
    # counts as the answer's); tokens after the end-of-turn (the template's separator) are cut.
    start = next((j for j, (s, e) in enumerate(offsets) if e > begin), len(offsets))
    stop = next((j for j, (s, e) in enumerate(offsets) if s >= end and e > s), len(offsets))
    return Answer(enc["input_ids"][:stop], max(start, 1))   # token 0 has nothing before it to predict it


@dataclass
class AnswerStats(TokenizeStats):
    """TokenizeStats of pairs / answers; `truncated` stays 0 (they are dropped, never cut)."""

    dropped_identical: int = 0


def pair_lengths(tokenizer, samples: list[Sample], system_prompt: str | None = None) -> list[int]:
    """Per preference pair, the length `tokenize_pairs` compares with max_len: its longer side."""
    return [max(len(tokenize_answer(tokenizer, s.messages, answer, system_prompt)) for answer in (s.chosen, s.rejected))
            for s in samples]


def _feedback_items(sample: Sample) -> list[tuple[list[dict], str, bool]]:
    """(prompt, answer, desirable) per answer of a KTO record; a preference pair gives two."""
    if sample.kind == "preference":
        return [(sample.messages, sample.chosen, True), (sample.messages, sample.rejected, False)]
    return [(sample.prompt_messages(), sample.reference(), bool(sample.label))]


def feedback_lengths(tokenizer, samples: list[Sample], system_prompt: str | None = None) -> list[int]:
    """Per answer (two per preference pair), the length `tokenize_feedback` compares with max_len."""
    return [len(tokenize_answer(tokenizer, prompt, answer, system_prompt))
            for s in samples for prompt, answer, _ in _feedback_items(s)]


def tokenize_pairs(tokenizer, samples: list[Sample], *, max_len: int,
                   system_prompt: str | None = None) -> tuple[list[Pair], AnswerStats]:
    """Preference samples as token pairs. A pair where either side is longer than `max_len` is
    dropped (cutting one answer short would make the comparison about length); so is a pair whose
    two answers tokenize the same (there is nothing to prefer)."""
    stats, out = AnswerStats(), []
    for s in samples:
        pair = Pair(tokenize_answer(tokenizer, s.messages, s.chosen, system_prompt),
                    tokenize_answer(tokenizer, s.messages, s.rejected, system_prompt))
        if max(len(pair.chosen), len(pair.rejected)) > max_len:
            stats.dropped_overlong += 1
            continue
        if pair.chosen.ids == pair.rejected.ids:
            stats.dropped_identical += 1
            continue
        if not pair.chosen.n_targets or not pair.rejected.n_targets:
            stats.dropped_no_target += 1
            continue
        out.append(pair)
        stats.examples += 1
        stats.tokens += len(pair)
        stats.target_tokens += pair.chosen.n_targets + pair.rejected.n_targets
        stats.lengths.append(len(pair))
    return out, stats


def tokenize_feedback(tokenizer, samples: list[Sample], *, max_len: int,
                      system_prompt: str | None = None) -> tuple[list[Feedback], AnswerStats]:
    """Unpaired feedback as token ids; preference pairs count as one desirable and one undesirable
    answer (KTO trains on pairs too)."""
    stats, out = AnswerStats(), []
    for s in samples:
        for prompt, answer, desirable in _feedback_items(s):
            tokens = tokenize_answer(tokenizer, prompt, answer, system_prompt)
            if len(tokens) > max_len:
                stats.dropped_overlong += 1
                continue
            if not tokens.n_targets:
                stats.dropped_no_target += 1
                continue
            out.append(Feedback(tokens, desirable))
            stats.examples += 1
            stats.tokens += len(tokens)
            stats.target_tokens += tokens.n_targets
            stats.lengths.append(len(tokens))
    return out, stats
