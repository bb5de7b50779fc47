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
    return None if value is None or value == "" else str(value)     # a blank id (CSV cell) is no id


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
        messages = self.read_messages(record.get(self.keys[0]), self.keys[0])
        check_conversation(messages, self.keys[0])
        return Sample(messages=messages, id=_id(record))

    @classmethod
    def read_messages(cls, raw, field: str) -> list[dict]:
        """A list of messages as [{"role", "content"}], each field named `field[i].key` in problems."""
        if raw is None:
            raise FieldProblem(field, "missing")
        if isinstance(raw, str) and not raw.strip():        # a blank CSV cell
            raise FieldProblem(field, "empty conversation", empty=True)
        if not isinstance(raw, list):
            raise FieldProblem(field, f"expected a list of messages, got {type(raw).__name__}")
        messages = []
        for i, m in enumerate(raw):
            where = f"{field}[{i}]"
            if not isinstance(m, dict):
                raise FieldProblem(where, f"expected an object, got {type(m).__name__}")
            if cls.role_key not in m:
                raise FieldProblem(f"{where}.{cls.role_key}", "missing")
            role = m[cls.role_key]
            if not isinstance(role, str):
                raise FieldProblem(f"{where}.{cls.role_key}", f"expected a string, got {type(role).__name__}")
            content = _content(m.get(cls.content_key), f"{where}.{cls.content_key}")
            messages.append({"role": cls.role_map.get(role, role), "content": content})
        return messages


@register
class ShareGPT(Messages):
    """{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}"""

    name = "sharegpt"
    keys = ("conversations",)
    order = 20
    role_key, content_key = "from", "value"
    role_map = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "system": "system",
                "user": "user", "assistant": "assistant"}


def check_prompt(messages: list[dict], field: str) -> None:
    """The turns before an answer: known roles, no empty turn, a user message, ending with a user turn."""
    if not messages:
        raise FieldProblem(field, "empty conversation", empty=True)
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise FieldProblem(f"{field}[{i}].role", f"unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not m["content"].strip():
            raise FieldProblem(f"{field}[{i}].content", "empty", empty=True)
        if m["role"] == "system" and i != 0:
            raise FieldProblem(f"{field}[{i}].role", "a system message may only come first")
    if messages[-1]["role"] != "user":
        raise FieldProblem(field, f"the prompt must end with the user turn the answers reply to (its last message "
                                  f"is {messages[-1]['role']})")


def _prompt(record: dict, key: str = "prompt") -> list[dict]:
    """A prompt given as a string (one user turn) or as a list of messages (TRL's conversational form)."""
    value = record.get(key)
    if isinstance(value, list):
        messages = Messages.read_messages(value, key)
        check_prompt(messages, key)
        return messages
    if value is not None and not isinstance(value, str):
        raise FieldProblem(key, f"expected a string or a list of messages, got {type(value).__name__}")
    return [{"role": "user", "content": _text(record, key)}]


def _answer(value, key: str) -> str:
    """One answer: a string, or a list of messages ending with the assistant's (TRL's conversational
    form; OpenAI's preference outputs), of which the last message is the answer."""
    if value is None:
        raise FieldProblem(key, "missing")
    if isinstance(value, list):
        if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
            raise FieldProblem(key, "expected a string or a list of messages ending with an assistant message")
        content = _content(value[-1].get("content"), f"{key}[{len(value) - 1}].content")
        if not content.strip():
            raise FieldProblem(f"{key}[{len(value) - 1}].content", "empty", empty=True)
        return content
    if not isinstance(value, str):
        raise FieldProblem(key, f"expected a string or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise FieldProblem(key, "empty", empty=True)
    return value


def _pair(messages: list[dict], chosen: str, rejected: str, rejected_key: str, record: dict) -> Sample:
    if chosen.strip() == rejected.strip():
        raise FieldProblem(rejected_key, "same text as the chosen answer; a pair needs two different answers")
    return Sample(messages=messages, chosen=chosen, rejected=rejected, id=_id(record))


@register
class Preference(Format):
    """{"prompt": str | messages, "chosen": str, "rejected": str}: a preference pair (DPO, ORPO)."""

    name = "preference"
    keys = ("prompt", "chosen", "rejected")
    order = 50
    # Tried before alpaca and prompt_completion: a pair that also carries their keys is read as a pair.
    detect_order = 25

    def parse(self, record: dict) -> Sample:
        messages = _prompt(record)
        return _pair(messages, _answer(record.get("chosen"), "chosen"), _answer(record.get("rejected"), "rejected"),
                     "rejected", record)


@register
class OpenAIPreference(Format):
    """{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}: OpenAI's preference JSONL."""

    name = "openai_preference"
    keys = ("input", "preferred_output", "non_preferred_output")
    order = 70
    detect_order = 26

    def parse(self, record: dict) -> Sample:
        given = record.get("input")
        if given is None:
            raise FieldProblem("input", "missing")
        if not isinstance(given, dict):
            raise FieldProblem("input", f"expected an object with \"messages\", got {type(given).__name__}")
        # input.tools / input.parallel_tool_calls are accepted and not used: tool calls are not trained.
        messages = Messages.read_messages(given.get("messages"), "input.messages")
        check_prompt(messages, "input.messages")
        return _pair(messages, self._output(record, "preferred_output"), self._output(record, "non_preferred_output"),
                     "non_preferred_output", record)

    @staticmethod
    def _output(record: dict, key: str) -> str:
        value = record.get(key)
        if isinstance(value, list) and len(value) > 1:
            raise FieldProblem(key, f"expected one assistant message, got {len(value)} messages")
        return _answer(value, key)


@register
class KTO(Format):
    """{"prompt": str | messages, "completion": str, "label": true | false}: unpaired feedback (KTO)."""

    name = "kto"
    keys = ("prompt", "completion", "label")
    order = 80
    # Tried before prompt_completion, whose keys it also carries.
    detect_order = 35

    def detect(self, record: dict) -> bool:
        # Only a true/false label: prompt/completion data with a class-name "label" column stays
        # prompt_completion, as it always was (`--format kto` reads it strictly).
        return super().detect(record) and isinstance(record["label"], bool)

    def parse(self, record: dict) -> Sample:
        messages = _prompt(record)
        completion = _answer(record.get("completion"), "completion")
        label = record.get("label")
        if label is None:
            raise FieldProblem("label", "missing")
        if not isinstance(label, bool):
            raise FieldProblem("label", f"expected true or false, got {type(label).__name__} {label!r}")
        return Sample(messages=[*messages, {"role": "assistant", "content": completion}], label=label, id=_id(record))


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
