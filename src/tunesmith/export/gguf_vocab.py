"""The tokenizer as GGUF metadata: vocab, merges or scores, special tokens, chat template.

Two tokenizer families map onto llama.cpp's tokenizers:

* byte-level BPE (GPT-2 style: Llama 3, Qwen2, SmolLM) -> tokenizer model "gpt2". llama.cpp
  re-implements each HF pre-tokenizer (the regex that splits text before BPE) and picks one by the
  `tokenizer.ggml.pre` name. We map the pre-tokenizer's shape to that name; an unknown shape is an
  error rather than a GGUF that silently tokenizes differently.
* SentencePiece BPE with byte fallback (Llama 2, Mistral 7B, TinyLlama) -> tokenizer model "llama".
  llama.cpp merges the adjacent pair whose result has the highest score, so each token's score is
  minus the rank of the first HF merge that makes it: the same order the HF BPE applies its merges in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

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


SUPPORTED = ("byte-level BPE (GPT-2 style: Llama 3, Qwen2, SmolLM, GPT-2) and SentencePiece-style BPE with "
             "byte fallback (Llama 2, Mistral 7B, TinyLlama)")
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def tokenizer_json(tokenizer, model_dir: Path) -> dict:
    """The pipeline the HF tokenizer runs: its own serialization, else tokenizer.json of the folder.

    The serialization comes first because transformers 5 rebuilds some pipelines from the tokenizer
    class (a Llama tokenizer.json with a legacy Prepend normalizer runs as a Metaspace pre-tokenizer),
    so the file on disk need not be what runs.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        return json.loads(backend.to_str())
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    raise UserError(f"{model_dir}: no tokenizer.json and the tokenizer is not a fast (tokenizers) one",
                    hint=f"GGUF export needs a tokenizer.json; supported: {SUPPORTED}")


def tokenizer_kind(tj: dict, source: str) -> str:
    """llama.cpp's tokenizer model for this HF tokenizer: "gpt2" or "llama"."""
    model = tj.get("model", {})
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback") and space_prefix(tj) is not None:
        return "llama"
    raise UserError(f"{source}: tokenizer model '{model.get('type')}' (byte_fallback={model.get('byte_fallback')}, "
                    f"pre-tokenizer {json.dumps(tj.get('pre_tokenizer'))[:120]}, normalizer "
                    f"{json.dumps(tj.get('normalizer'))[:120]}) has no llama.cpp equivalent here",
                    hint=f"supported: {SUPPORTED}; for others use llama.cpp's convert_hf_to_gguf.py")


def space_prefix(tj: dict) -> bool | None:
    """Whether a SentencePiece-style pipeline puts '▁' in front of the text; None for an unknown shape.

    Two shapes occur: a Metaspace pre-tokenizer (transformers 5, and newer tokenizer.json files), and
    the legacy normalizer Prepend('▁') + Replace(' ', '▁') with no pre-tokenizer.
    """
    pre, norm = tj.get("pre_tokenizer"), tj.get("normalizer")
    if pre and pre.get("type") == "Metaspace" and pre.get("replacement") == "\u2581" and not pre.get("split", True) \
            and norm is None:
        scheme = pre.get("prepend_scheme") or ("always" if pre.get("add_prefix_space", True) else "never")
        return scheme != "never"
    steps = (norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else [])
    kinds = [step.get("type") for step in steps]
    escapes = any(step.get("type") == "Replace" and step.get("pattern", {}).get("String") == " "
                  and step.get("content") == "\u2581" for step in steps)
    if pre is None and escapes and set(kinds) <= {"Prepend", "Replace"}:
        return "Prepend" in kinds
    return None


def token_table(tj: dict, vocab_size: int, source: str, spm: bool,
                unk_id: int | None = None) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for ids 0..vocab_size-1."""
    import gguf

    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    for tid, tok in added.items():
        vocab[tok["content"]] = tid
    by_id = {i: t for t, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise UserError(f"{source}: tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}",
                        hint="resize the model's embeddings to the tokenizer (len(tokenizer)) before exporting")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            # Embedding rows beyond the tokenizer (padding to a multiple of 64 etc.) still need a name.
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = by_id[i]
        tokens.append(text)
        if spm and i == unk_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif spm and BYTE_TOKEN.fullmatch(text):
            types.append(gguf.TokenType.BYTE)   # llama.cpp's byte fallback looks these up by name
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def merges_of(tj: dict) -> list[list[str]]:
    return [m.split(" ", 1) if isinstance(m, str) else list(m) for m in tj["model"].get("merges", [])]


def merge_scores(tokens: list[str], merges: list[list[str]]) -> list[float]:
    """Per token: minus the rank of the first merge producing it; tokens no merge makes come last."""
    first_rank: dict[str, int] = {}
    for rank, (left, right) in enumerate(merges):
        first_rank.setdefault(left + right, rank)
    floor = -float(len(merges) + 1)
    return [-float(first_rank[t]) if t in first_rank else floor for t in tokens]


def write_vocab(writer, tokenizer, model_dir: Path, vocab_size: int, pre: str | None = None) -> None:

    tj = tokenizer_json(tokenizer, model_dir)
    kind = tokenizer_kind(tj, str(model_dir))
    tokens, types = token_table(tj, vocab_size, str(model_dir), spm=kind == "llama", unk_id=tokenizer.unk_token_id)
    merges = merges_of(tj)
    writer.add_tokenizer_model(kind)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "gpt2":
        writer.add_tokenizer_pre(pre or detect_pre(tj, str(model_dir)))
        writer.add_token_merges([" ".join(m) for m in merges])
    else:
        writer.add_token_scores(merge_scores(tokens, merges))
        writer.add_add_space_prefix(bool(space_prefix(tj)))
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id}
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
               "pad": writer.add_pad_token_id}
    for key, tid in special.items():
        if tid is not None:
            setters[key](int(tid))
    # Whether the HF tokenizer puts BOS / EOS around plain text decides llama.cpp's add_bos / add_eos.
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id))
    writer.add_add_eos_token(bool(tokenizer.eos_token_id is not None and probe and probe[-1] == tokenizer.eos_token_id))
    if getattr(tokenizer, "chat_template", None):
        template = tokenizer.chat_template
        writer.add_chat_template(template if isinstance(template, str) else template.get("default", ""))
