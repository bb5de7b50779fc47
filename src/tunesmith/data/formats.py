"""Input formats: each one detects its records and turns them into a `Sample`.

A format is one `Format` subclass registered with `@register`; that is all a new format needs.
`data.format` in a run config, `--format` of the `data` commands, the "cannot tell the format"
hint and `tunesmith data formats` all read `FORMATS`, listed by `order`; `detect_format` tries the
formats by `detect_order`, most specific first.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from tunesmith.data.schema import ROLES, Sample


class FieldProblem(Exception):
    """A problem with one field of one record: becomes `FILE:LINE: field: message`."""

    def __init__(self, field: str, message: str, *, empty: bool = False):
        super().__init__(message)
        self.field = field
        self.message = message
        # An empty field is an error for `validate`, but only a removal reason for `clean`.
        self.empty = empty


class Format:
    name: str = ""
    keys: tuple[str, ...] = ()     # the keys that identify a record of this format
    order: int = 1000              # listing position, lowest first
    # Detection position, lowest first; the listing order unless a format must be tried earlier.
    detect_order: int | None = None

    @property
    def detect_rank(self) -> int:
        return self.order if self.detect_order is None else self.detect_order

    def detect(self, record: dict) -> bool:
        return all(k in record for k in self.keys)

    def parse(self, record: dict) -> Sample:
        raise NotImplementedError


FORMATS: dict[str, Format] = {}


def register(cls: type[Format]) -> type[Format]:
    if not cls.name or not cls.keys:
        raise TypeError(f"{cls.__qualname__}: a registered format needs a name and the keys that identify it")
    FORMATS[cls.name] = cls()
    listed = sorted(FORMATS.values(), key=lambda f: f.order)
    FORMATS.clear()
    FORMATS.update((f.name, f) for f in listed)
    return cls


def unregister(name: str) -> None:
    FORMATS.pop(name, None)


def unknown_format(name: str) -> str | None:
    """Why `name` is not a format `data.format` / `--format` accepts, or None when it is one."""
    if name == "auto" or name in FORMATS:
        return None
    guess = difflib.get_close_matches(str(name), ["auto", *FORMATS], n=1)
    extra = f" (did you mean '{guess[0]}'?)" if guess else ""
    return f"unknown data format '{name}'{extra}; use one of: auto, {', '.join(FORMATS)}"


def keys_hint() -> str:
    """The record keys that name each format, as the 'cannot tell the format' message lists them."""
    return ", ".join("+".join(f.keys) for f in FORMATS.values())


def _text(record: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    if key not in record or record[key] is None:
        if required:
            raise FieldProblem(key, "missing")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise FieldProblem(key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and required and not value.strip():
        raise FieldProblem(key, "empty", empty=True)
    return value


def _id(record: dict) -> str | None:
    value = record.get("id")
    return None if value is None else str(value)


def check_conversation(messages: list[dict], field: str = "messages") -> None:
    if not messages:
        raise FieldProblem(field, "empty conversation", empty=True)
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise FieldProblem(f"{field}[{i}].role", f"unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not m["content"].strip():
            raise FieldProblem(f"{field}[{i}].content", "empty", empty=True)
        if m["role"] == "system" and i != 0:
            raise FieldProblem(f"{field}[{i}].role", "a system message may only come first")
    if messages[-1]["role"] != "assistant":
        raise FieldProblem(field, "conversation does not end with an assistant message")
    if not any(m["role"] == "user" for m in messages):
        raise FieldProblem(field, "conversation has no user message")


def _content(value, where: str) -> str:
    """A message's content: a string, or OpenAI content parts of which the text parts are kept."""
    if isinstance(value, str):
        return value
    if value is None:
        raise FieldProblem(where, "missing (tool calls and other non-text turns are not supported)")
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        kinds = {p.get("type") for p in value} - {"text"}
        if kinds:
            raise FieldProblem(where, f"only text content parts are supported, found {', '.join(sorted(map(str, kinds)))}")
        return "".join(str(p.get("text", "")) for p in value)
    raise FieldProblem(where, f"expected a string, got {type(value).__name__}")


@register
class Messages(Format):
    """OpenAI / ChatML: {"messages": [{"role": ..., "content": ...}, ...]}.

    Other keys of the record (a serve log's `adapter`, `timestamp`, `usage` ...) and of each message
    (`name`) are ignored, so request logs can be trained on as they are.
    """

    name = "messages"
    keys = ("messages",)
    order = 10
    role_key, content_key = "role", "content"
    # OpenAI's newer "developer" role is its system prompt.
    role_map: dict[str, str] = {"developer": "system"}

    def parse(self, record: dict) -> Sample:
        raw = record.get(self.keys[0])
        if raw is None:
            raise FieldProblem(self.keys[0], "missing")
        if not isinstance(raw, list):
            raise FieldProblem(self.keys[0], f"expected a list of messages, got {type(raw).__name__}")
        messages = []
        for i, m in enumerate(raw):
            where = f"{self.keys[0]}[{i}]"
            if not isinstance(m, dict):
                raise FieldProblem(where, f"expected an object, got {type(m).__name__}")
            if self.role_key not in m:
                raise FieldProblem(f"{where}.{self.role_key}", "missing")
            role = m[self.role_key]
            if not isinstance(role, str):
                raise FieldProblem(f"{where}.{self.role_key}", f"expected a string, got {type(role).__name__}")
            content = _content(m.get(self.content_key), f"{where}.{self.content_key}")
            messages.append({"role": self.role_map.get(role, role), "content": content})
        check_conversation(messages, self.keys[0])
        return Sample(messages=messages, id=_id(record))


@register
class ShareGPT(Messages):
    """{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}"""

    name = "sharegpt"
    keys = ("conversations",)
    order = 20
    role_key, content_key = "from", "value"
    role_map = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "system": "system",
                "user": "user", "assistant": "assistant"}


@register
class Preference(Format):
    """{"prompt": str | messages, "chosen": str, "rejected": str}: read and validated for DPO-style use."""

    name = "preference"
    keys = ("prompt", "chosen", "rejected")
    order = 50
    # Tried before alpaca and prompt_completion: a pair that also carries their keys is read as a pair.
    detect_order = 25

    def parse(self, record: dict) -> Sample:
        prompt = record.get("prompt")
        if isinstance(prompt, list):
            messages = Messages().parse({"messages": prompt + [{"role": "assistant", "content": "x"}]}).messages[:-1]
        else:
            messages = [{"role": "user", "content": _text(record, "prompt")}]
        return Sample(messages=messages, chosen=self._answer(record, "chosen"),
                      rejected=self._answer(record, "rejected"), id=_id(record))

    @staticmethod
    def _answer(record: dict, key: str) -> str:
        # TRL's conversational form gives each answer as a list of messages ending with the assistant.
        value = record.get(key)
        if isinstance(value, list):
            if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
                raise FieldProblem(key, "expected a string or a list of messages ending with an assistant message")
            content = _content(value[-1].get("content"), f"{key}[{len(value) - 1}].content")
            if not content.strip():
                raise FieldProblem(key, "empty", empty=True)
            return content
        return _text(record, key)


@register
class Alpaca(Format):
    """{"instruction": ..., "input": optional, "output": ...}"""

    name = "alpaca"
    keys = ("instruction", "output")
    order = 30

    def parse(self, record: dict) -> Sample:
        instruction = _text(record, "instruction")
        extra = _text(record, "input", required=False)
        output = _text(record, "output")
        user = instruction if not extra or not extra.strip() else f"{instruction}\n\n{extra}"
        messages = []
        if isinstance(record.get("system"), str) and record["system"].strip():
            messages.append({"role": "system", "content": record["system"]})
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return Sample(messages=messages, id=_id(record))


@register
class PromptCompletion(Format):
    """{"prompt": ..., "completion": ...}"""

    name = "prompt_completion"
    keys = ("prompt", "completion")
    order = 40

    def parse(self, record: dict) -> Sample:
        return Sample(
            messages=[{"role": "user", "content": _text(record, "prompt")},
                      {"role": "assistant", "content": _text(record, "completion")}],
            id=_id(record),
        )


@register
class Text(Format):
    """{"text": ...}: raw text for continued pre-training."""

    name = "text"
    keys = ("text",)
    order = 60

    def parse(self, record: dict) -> Sample:
        return Sample(text=_text(record, "text"), id=_id(record))


def detect_format(record: dict) -> str | None:
    for fmt in sorted(FORMATS.values(), key=lambda f: f.detect_rank):
        if fmt.detect(record):
            return fmt.name
    return None


def parser_for(name: str) -> Callable[[dict], Sample]:
    return FORMATS[name].parse
