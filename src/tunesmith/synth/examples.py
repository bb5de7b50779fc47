"""Candidates (a synthesized example before curation) and reading them out of a teacher's reply.

A teacher is asked for JSON ({"prompt", "response"} or a list of them). Replies wrap it in prose
or code fences often enough that the first JSON value in the text is taken; a reply with none, or
with pairs missing a prompt or a response, is an invalid reply: counted and dropped, never written.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

PROMPT_KEYS = ("prompt", "instruction", "question", "input")
RESPONSE_KEYS = ("response", "answer", "output", "completion")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class InvalidReply(Exception):
    pass


@dataclass
class Candidate:
    messages: list[dict]
    provenance: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else ""

    @property
    def id(self) -> str:
        digest = hashlib.blake2b(json.dumps(self.messages, sort_keys=True).encode(), digest_size=6).hexdigest()
        return f"{self.provenance.get('mode', 'synth')}-{digest}"

    def record(self) -> dict:
        """The training record: a `messages` chat (what training reads) plus provenance (ignored by training)."""
        return {"id": self.id, "messages": self.messages, "provenance": self.provenance}


def first_json(text: str):
    """The first JSON object or array in `text` (inside a code fence if there is one)."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for body in candidates:
        for start in (i for i, ch in enumerate(body) if ch in "[{"):
            try:
                value, _ = decoder.raw_decode(body, start)
            except json.JSONDecodeError:
                continue
            return value
    raise InvalidReply("no JSON object in the reply")


def _pick(obj: dict, keys: tuple[str, ...]) -> str | None:
    for k in keys:
        value = obj.get(k)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, (dict, list)) and value:  # a structured answer (a JSON task) kept as compact JSON
            return json.dumps(value, ensure_ascii=False)
    return None


def parse_pairs(text: str | None) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a reply; InvalidReply when there are none."""
    if text is None or not text.strip():
        raise InvalidReply("empty reply")
    value = first_json(text)
    items = value if isinstance(value, list) else [value]
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidReply(f"expected JSON objects, got {type(item).__name__}")
        prompt, response = _pick(item, PROMPT_KEYS), _pick(item, RESPONSE_KEYS)
        if prompt is None or response is None:
            raise InvalidReply(f"an item lacks {'a prompt' if prompt is None else 'a response'} (keys {sorted(item)})")
        pairs.append((prompt, response))
    if not pairs:
        raise InvalidReply("an empty list")
    return pairs


def parse_prompt(text: str | None) -> str:
    """A rewritten prompt alone (the first pair's prompt, or the whole reply when it is plain text)."""
    try:
        value = first_json(text or "")
        if isinstance(value, dict) and _pick(value, PROMPT_KEYS):
            return _pick(value, PROMPT_KEYS)
    except InvalidReply:
        pass
    if not (text or "").strip():
        raise InvalidReply("empty reply")
    return text.strip()
