"""The tokenizer as GGUF metadata: gpt2-style byte-level BPE vocab, merges, special tokens, chat template.

llama.cpp re-implements each HF pre-tokenizer (the regex that splits text before BPE) and picks one by
the `tokenizer.ggml.pre` name. We read the pre-tokenizer from tokenizer.json and map its shape to that
name; an unknown shape is an error rather than a GGUF that silently tokenizes differently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tunesmith.errors import UserError

# Regexes of HF Split pre-tokenizers (as tokenizer.json stores them) -> llama.cpp pre-tokenizer name.
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Each detector looks at the parsed tokenizer.json "pre_tokenizer" and returns a llama.cpp name or None.
PRE_TOKENIZERS: list[tuple[str, Callable[[dict], bool]]] = []


def register_pre(name: str):
    def wrap(fn):
        PRE_TOKENIZERS.append((name, fn))
        return fn
    return wrap


def _steps(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]


def _split_regex(step: dict) -> str | None:
    if step.get("type") == "Split":
        pattern = step.get("pattern", {})
        return pattern.get("Regex") or pattern.get("String")
    return None


@register_pre("gpt-2")
def _gpt2(pre):
    steps = _steps(pre)
    return len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True)


@register_pre("smollm")
def _starcoder_digits(pre):
    # Digits split one by one, then the GPT-2 regex: SmolLM / StarCoder tokenizers.
    steps = _steps(pre)
    return (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex", True))


@register_pre("llama-bpe")
def _llama3(pre):
    steps = _steps(pre)
    return bool(steps) and _split_regex(steps[0]) == LLAMA3_REGEX


@register_pre("qwen2")
def _qwen2(pre):
    steps = _steps(pre)
    return bool(steps) and _split_regex(steps[0]) == QWEN2_REGEX


def detect_pre(tokenizer_json: dict, source: str) -> str:
    pre = tokenizer_json.get("pre_tokenizer")
    for name, matches in PRE_TOKENIZERS:
        if matches(pre):
            return name
    raise UserError(f"{source}: unknown pre-tokenizer {json.dumps(pre)[:200]}",
                    hint="llama.cpp must know the same split rule; supported: "
                         + ", ".join(n for n, _ in PRE_TOKENIZERS) + " (pass --tokenizer-pre NAME to force one)")


def tokenizer_json(tokenizer, model_dir: Path) -> dict:
    """tokenizer.json of the model folder, or the fast tokenizer's own serialization."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise UserError(f"{model_dir}: no tokenizer.json and the tokenizer is not a fast (tokenizers) one",
                        hint="GGUF export needs a byte-level BPE tokenizer.json")
    return json.loads(backend.to_str())


def write_vocab(writer, tokenizer, model_dir: Path, vocab_size: int, pre: str | None = None) -> None:
    import gguf

    tj = tokenizer_json(tokenizer, model_dir)
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(f"{model_dir}: tokenizer model '{model.get('type')}' (byte_fallback={model.get('byte_fallback')}) "
                        "is not a byte-level BPE tokenizer",
                        hint="GGUF export writes gpt2-style BPE vocabularies (Llama 3, Qwen2, SmolLM, GPT-2 family)")
    pre = pre or detect_pre(tj, str(model_dir))

    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    for tid, tok in added.items():
        vocab[tok["content"]] = tid
    by_id = {i: t for t, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"{model_dir}: tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}",
                        hint="resize the model's embeddings to the tokenizer (len(tokenizer)) before exporting")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            # Embedding rows beyond the tokenizer (padding to a multiple of 64 etc.) still need a name.
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id}
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
               "pad": writer.add_pad_token_id}
    for key, tid in special.items():
        if tid is not None:
            setters[key](int(tid))
    # Whether the HF tokenizer puts BOS in front of plain text decides llama.cpp's add_bos default.
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id))
    if getattr(tokenizer, "chat_template", None):
        template = tokenizer.chat_template
        writer.add_chat_template(template if isinstance(template, str) else template.get("default", ""))
