"""Input formats: each one detects its records and turns them into a `Sample`.

A format registers itself with `@register`; `detect_format` tries them in registration order,
most specific first, so a new format is one class and no if/elif chain changes.
"""

from __future__ import annotations

from typing import Callable

from tunesmith.data.schema import ROLES, Sample


class FieldProblem(Exception):
    """A problem with one field of one record: becomes `FILE:LINE: field: message`."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class Format:
    name: str = ""
    keys: tuple[str, ...] = ()

    def detect(self, record: dict) -> bool:
        return all(k in record for k in self.keys)

    def parse(self, record: dict) -> Sample:
        raise NotImplementedError


FORMATS: dict[str, Format] = {}


def register(cls: type[Format]) -> type[Format]:
    FORMATS[cls.name] = cls()
    return cls


def _text(record: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    if key not in record or record[key] is None:
        if required:
            raise FieldProblem(key, "missing")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise FieldProblem(key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and required and not value.strip():
        raise FieldProblem(key, "empty")
    return value


def _id(record: dict) -> str | None:
    value = record.get("id")
    return None if value is None else str(value)


def check_conversation(messages: list[dict], field: str = "messages") -> None:
    if not messages:
        raise FieldProblem(field, "empty conversation")
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise FieldProblem(f"{field}[{i}].role", f"unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not m["content"].strip():
            raise FieldProblem(f"{field}[{i}].content", "empty")
        if m["role"] == "system" and i != 0:
            raise FieldProblem(f"{field}[{i}].role", "a system message may only come first")
    if messages[-1]["role"] != "assistant":
        raise FieldProblem(field, "conversation does not end with an assistant message")
    if not any(m["role"] == "user" for m in messages):
        raise FieldProblem(field, "conversation has no user message")


@register
class Messages(Format):
    """OpenAI / ChatML: {"messages": [{"role": ..., "content": ...}, ...]}"""

    name = "messages"
    keys = ("messages",)
    role_key, content_key = "role", "content"
    role_map: dict[str, str] = {}

    def parse(self, record: dict) -> Sample:
        raw = record[self.keys[0]]
        if not isinstance(raw, list):
            raise FieldProblem(self.keys[0], f"expected a list of messages, got {type(raw).__name__}")
        messages = []
        for i, m in enumerate(raw):
            where = f"{self.keys[0]}[{i}]"
            if not isinstance(m, dict):
                raise FieldProblem(where, f"expected an object, got {type(m).__name__}")
            role = _text(m, self.role_key, required=True)
            content = m.get(self.content_key)
            if content is None:
                raise FieldProblem(f"{where}.{self.content_key}", "missing")
            if not isinstance(content, str):
                raise FieldProblem(f"{where}.{self.content_key}", f"expected a string, got {type(content).__name__}")
            messages.append({"role": self.role_map.get(role, role), "content": content})
        check_conversation(messages, self.keys[0])
        return Sample(messages=messages, id=_id(record))


@register
class ShareGPT(Messages):
    """{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}"""

    name = "sharegpt"
    keys = ("conversations",)
    role_key, content_key = "from", "value"
    role_map = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@register
class Preference(Format):
    """{"prompt": str | messages, "chosen": str, "rejected": str}: read and validated for DPO-style use."""

    name = "preference"
    keys = ("prompt", "chosen", "rejected")

    def parse(self, record: dict) -> Sample:
        prompt = record.get("prompt")
        if isinstance(prompt, list):
            messages = Messages().parse({"messages": prompt + [{"role": "assistant", "content": "x"}]}).messages[:-1]
        else:
            messages = [{"role": "user", "content": _text(record, "prompt")}]
        return Sample(messages=messages, chosen=_text(record, "chosen"), rejected=_text(record, "rejected"), id=_id(record))


@register
class Alpaca(Format):
    """{"instruction": ..., "input": optional, "output": ...}"""

    name = "alpaca"
    keys = ("instruction", "output")

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

    def parse(self, record: dict) -> Sample:
        return Sample(text=_text(record, "text"), id=_id(record))


def detect_format(record: dict) -> str | None:
    for name, fmt in FORMATS.items():
        if fmt.detect(record):
            return name
    return None


def parser_for(name: str) -> Callable[[dict], Sample]:
    return FORMATS[name].parse
