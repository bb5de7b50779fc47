"""Ollama Modelfile for an exported GGUF: Go-template form of the model's chat template and its stop tokens.

Ollama needs its own (Go) template; each chat format we recognise in the Jinja template maps to one.
An unrecognised template gets no TEMPLATE line: Ollama then falls back to the GGUF's own
tokenizer.chat_template metadata, which our converter always writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.io_utils import atomic_file


@dataclass(frozen=True)
class ChatFormat:
    name: str
    marker: str               # substring of the Jinja template that identifies the format
    template: str             # Ollama Go template
    stops: tuple[str, ...]


CHAT_FORMATS: list[ChatFormat] = []


def register_format(fmt: ChatFormat) -> None:
    CHAT_FORMATS.append(fmt)


register_format(ChatFormat(
    "chatml", "<|im_start|>",
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n",
    ("<|im_end|>", "<|im_start|>")))

register_format(ChatFormat(
    "llama3", "<|start_header_id|>",
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")))

register_format(ChatFormat(
    "mistral", "[INST]",
    "{{- range $i, $m := .Messages }}{{- if eq $m.Role \"user\" }}[INST] "
    "{{ if and (eq $i 0) $.System }}{{ $.System }}\n\n{{ end }}{{ $m.Content }} [/INST]"
    "{{- else if eq $m.Role \"assistant\" }}{{ $m.Content }}</s>{{- end }}{{- end }}",
    ("[INST]", "</s>")))


def detect_format(chat_template: str | None) -> ChatFormat | None:
    for fmt in CHAT_FORMATS:
        if chat_template and fmt.marker in chat_template:
            return fmt
    return None


def default_system(chat_template: str | None, fmt: ChatFormat | None) -> str | None:
    """The system prompt a template inserts when the conversation has none (SmolLM2 and Qwen2 do)."""
    if not chat_template or fmt is None or fmt.name != "chatml":
        return None
    # The newline after "system" is a real one or an escaped "\\n", depending on how the template was saved.
    m = re.search(r"<\|im_start\|>system(?:\n|\\n)(.+?)<\|im_end\|>", chat_template)
    return m.group(1) if m else None


def render_modelfile(gguf_name: str, chat_template: str | None, eos_token: str | None,
                     adapter_name: str | None = None, others: list[str] | None = None) -> str:
    fmt = detect_format(chat_template)
    lines = ["# Ollama Modelfile written by tunesmith: `ollama create NAME -f Modelfile`"]
    if others:
        lines.append("# other quantizations in this folder: " + ", ".join(others) + " (edit FROM to switch)")
    lines.append(f"FROM ./{gguf_name}")
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    if fmt is None:
        lines.append("# chat format not recognised: Ollama uses the GGUF's tokenizer.chat_template")
    else:
        lines.append(f'TEMPLATE """{fmt.template}"""')
        system = default_system(chat_template, fmt)
        if system:
            lines.append(f'SYSTEM """{system}"""')
    stops = list(fmt.stops) if fmt else []
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: Path, gguf_name: str, tokenizer, adapter_name: str | None = None,
                    others: list[str] | None = None) -> Path:
    template = getattr(tokenizer, "chat_template", None)
    text = render_modelfile(gguf_name, template if isinstance(template, str) else None,
                            getattr(tokenizer, "eos_token", None), adapter_name, others)
    path = Path(out_dir) / "Modelfile"
    with atomic_file(path) as fh:
        fh.write(text)
    return path
