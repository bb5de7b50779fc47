"""Chat templates and exact assistant-only loss masks.

Most chat templates have no `{% generation %}` markers, so the assistant spans are found by
rendering conversation prefixes: the text of messages[:i] with the generation prompt ends exactly
where assistant turn i begins, and messages[:i+1] ends where it stops. Tokens inside those spans
(including the end-of-turn token, so the model learns to stop) carry labels; everything else is -100.
"""

from __future__ import annotations

from tunesmith.errors import ConfigError

NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
        "{% else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
}

# The end-of-turn marker each named template closes an assistant turn with (None: the EOS token).
_END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "alpaca": None}
# Markers that must be single special tokens, so a turn boundary is one token the model can learn.
_SPECIAL = {"chatml": ["<|im_start|>", "<|im_end|>"],
            "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "alpaca": []}


def apply_named_template(tokenizer, template: str | None) -> None:
    if template in (None, "auto"):
        if not getattr(tokenizer, "chat_template", None):
            # A base model without a template: ChatML is the most widely understood default.
            tokenizer.chat_template = NAMED_TEMPLATES["chatml"]
        return
    if template not in NAMED_TEMPLATES:
        raise ConfigError(f"data.template: unknown template '{template}'",
                          hint=f"use 'auto' or one of {', '.join(NAMED_TEMPLATES)}")
    tokenizer.chat_template = NAMED_TEMPLATES[template]
    vocab = tokenizer.get_vocab()
    missing = [t for t in _SPECIAL[template] if t not in vocab]
    if missing:
        # The caller resizes the model's embeddings when the tokenizer grows (pipeline does).
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)


def end_of_turn_text(tokenizer) -> str | None:
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>"):
        if marker in (tokenizer.chat_template or ""):
            return marker
    return tokenizer.eos_token


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return (text, [(start, end) character spans of assistant turns])."""
    full = render(tokenizer, messages)
    eot = end_of_turn_text(tokenizer)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not (full.startswith(through) and through.startswith(before)):
            # Template rewrites earlier turns (e.g. strips reasoning); only the last turn is exact.
            if i != len(messages) - 1:
                continue
            before = render(tokenizer, messages[:i], generation_prompt=True)
            if not full.startswith(before):
                raise ConfigError("the chat template renders a conversation differently from its prefix; "
                                  "cannot find the assistant span", hint="set data.template to chatml, llama3 or alpaca")
            through = full
        start, end = len(before), len(through)
        turn = full[start:end]
        cut = turn.rfind(eot) if eot else -1
        # Keep the end-of-turn token in the span, but not the template's separator after it.
        end = start + cut + len(eot) if cut >= 0 else start + len(turn.rstrip())
        spans.append((start, end))
    return full, spans
