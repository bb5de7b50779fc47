"""Check exported GGUF files inside llama.cpp against the torch model they came from.

Both sides see the same token ids (the HF tokenizer's), so the comparison measures the weights and
the graph, not tokenizer differences (`tokenizer_agreement` checks those separately). llama.cpp runs
with an f32 KV cache here: its default f16 cache alone moves logits by ~1e-2.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import UserError
from tunesmith.export.heldout import HELDOUT_TEXT, VERIFY_PROMPTS
from tunesmith.export.llama_runtime import open_llama

GGML_TYPE_F32 = 0


@dataclass
class Reference:
    ppl: float
    continuations: list[list[int]]


@dataclass
class VerifyRow:
    type: str
    bits_per_weight: float | None
    size_mb: float | None
    ppl: float
    delta_vs_torch_pct: float
    delta_vs_f16_pct: float | None
    agreement: float          # prompts whose greedy continuation equals torch's, all tokens
    token_agreement: float    # mean fraction of continuation tokens matching before the first divergence


@dataclass
class VerifyInputs:
    chunks: list[list[int]]     # held-out text, tokenized, in windows of ctx tokens
    prompts: list[list[int]]
    new_tokens: int


# Perplexity needs one predicted position: a window of two tokens.
MIN_TEXT_TOKENS = 2


def check_verify_options(n_prompts: int, new_tokens: int) -> None:
    """Refuse counts that leave a verification column empty (an agreement over zero prompts)."""
    if n_prompts < 1:
        raise UserError(f"--verify-prompts: {n_prompts} prompts; greedy agreement needs at least 1",
                        hint="e.g. --verify-prompts 16")
    if new_tokens < 1:
        raise UserError(f"--verify-tokens: {new_tokens} tokens; greedy continuations need at least 1",
                        hint="e.g. --verify-tokens 24")


def build_inputs(tokenizer, n_prompts: int = 16, new_tokens: int = 24, ctx: int = 256,
                 text: str | None = None, max_tokens: int | None = None,
                 source: str = "--verify-text") -> VerifyInputs:
    check_verify_options(n_prompts, new_tokens)
    # An empty file is the user's text too: measuring the built-in passage instead would mislabel the table.
    ids = tokenizer(HELDOUT_TEXT if text is None else text, add_special_tokens=False)["input_ids"]
    if len(ids) < MIN_TEXT_TOKENS:
        raise UserError(f"{source}: the held-out text is {len(ids)} token(s); perplexity needs at least "
                        f"{MIN_TEXT_TOKENS}", hint="pass a longer text file (a few hundred tokens or more)")
    if max_tokens:
        ids = ids[:max_tokens]
    chunks = [ids[i:i + ctx] for i in range(0, len(ids), ctx)]
    chunks = [c for c in chunks if len(c) > 1]
    prompts = []
    for p in (VERIFY_PROMPTS * (1 + n_prompts // len(VERIFY_PROMPTS)))[:n_prompts]:
        if getattr(tokenizer, "chat_template", None):
            prompts.append(list(tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                              add_generation_prompt=True, tokenize=True,
                                                              return_dict=True)["input_ids"]))
        else:
            prompts.append(tokenizer(p)["input_ids"])
    return VerifyInputs(chunks, prompts, new_tokens)


def nll_from_logits(logits: np.ndarray, ids: list[int]) -> tuple[float, int]:
    """Summed next-token NLL over positions 1..n-1 of one window; logits (n, vocab) float."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    logz = np.log(np.exp(x).sum(axis=1))
    target = np.asarray(ids[1:])
    return float((logz - x[np.arange(len(target)), target]).sum()), len(target)


@torch.no_grad()
def torch_reference(model, inputs: VerifyInputs) -> Reference:
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for chunk in inputs.chunks:
        logits = model(torch.tensor([chunk], device=device)).logits[0].float().cpu().numpy()
        s, n = nll_from_logits(logits, chunk)
        total, count = total + s, count + n
    conts = []
    for prompt in inputs.prompts:
        ids = torch.tensor([prompt], device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=inputs.new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None)
        conts.append(out[0, len(prompt):].tolist())
    return Reference(math.exp(total / count), conts)


def open_gguf(path: Path, ctx: int, lora: Path | None = None, threads: int | None = None):
    kwargs = {"lora_path": str(lora)} if lora else {}
    return open_llama(path, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                      n_threads=threads or max(1, min(4, os.cpu_count() or 1)), seed=0,
                      type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, **kwargs)


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def gguf_measure(path: Path, inputs: VerifyInputs, lora: Path | None = None, threads: int | None = None) -> Reference:
    ctx = max(max(len(c) for c in inputs.chunks), max(len(p) for p in inputs.prompts) + inputs.new_tokens) + 8
    llm = open_gguf(path, ctx, lora, threads)
    try:
        total, count = 0.0, 0
        for chunk in inputs.chunks:
            s, n = nll_from_logits(gguf_logits(llm, chunk), chunk)
            total, count = total + s, count + n
        conts = []
        for prompt in inputs.prompts:
            llm.reset()
            llm.eval(prompt)
            out = []
            for _ in range(inputs.new_tokens):
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                out.append(nxt)
                llm.eval([nxt])
            conts.append(out)
    finally:
        llm.close()
    return Reference(math.exp(total / count), conts)


def agreement(ref: list[list[int]], got: list[list[int]]) -> tuple[float, float]:
    exact = sum(a == b for a, b in zip(ref, got)) / len(ref)
    prefix = []
    for a, b in zip(ref, got):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix.append(n / max(1, len(a)))
    return exact, float(np.mean(prefix))


def tokenizer_agreement(path: Path, tokenizer, texts: list[str]) -> float:
    """Fraction of texts that llama.cpp tokenizes exactly as the HF tokenizer (special tokens parsed)."""
    llm = open_llama(path, vocab_only=True)
    try:
        same = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)
                == tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    finally:
        llm.close()
    return sum(same) / len(same)


def tensor_bits_per_weight(path: Path) -> float:
    """Bits per weight as llama.cpp counts them: tensor bytes over elements (metadata excluded)."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    return 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)


def verify_files(files: dict[str, Path], reference: Reference, inputs: VerifyInputs,
                 lora: Path | None = None, threads: int | None = None, log=print) -> list[VerifyRow]:
    rows: list[VerifyRow] = []
    measured: dict[str, float] = {}
    for qtype, path in files.items():
        got = gguf_measure(path, inputs, lora, threads)
        measured[qtype] = got.ppl
        exact, prefix = agreement(reference.continuations, got.continuations)
        size = os.path.getsize(path)
        rows.append(VerifyRow(qtype, tensor_bits_per_weight(path), size / 1e6, got.ppl,
                              100 * (got.ppl / reference.ppl - 1), None, exact, prefix))
        log(f"verified {path.name}: ppl {got.ppl:.4f} (torch {reference.ppl:.4f}), greedy agreement {exact:.0%}")
    f16 = measured.get("f16", measured.get("f32"))
    for row in rows:
        row.delta_vs_f16_pct = None if f16 is None else 100 * (row.ppl / f16 - 1)
    rows.insert(0, VerifyRow("torch fp32", 32.0, None, reference.ppl, 0.0,
                             None if f16 is None else 100 * (reference.ppl / f16 - 1), 1.0, 1.0))
    return rows


TABLE_HEADER = ["type", "bits/weight", "size (MB)", "ppl", "Δppl vs torch", "Δppl vs f16", "greedy agreement",
                "token agreement"]


def table_cells(row: VerifyRow) -> list[str]:
    pct = lambda v: "—" if v is None else f"{v:+.3f} %"  # noqa: E731
    return [row.type, f"{row.bits_per_weight:.2f}" if row.bits_per_weight else "—",
            f"{row.size_mb:.1f}" if row.size_mb else "—", f"{row.ppl:.4f}", pct(row.delta_vs_torch_pct),
            pct(row.delta_vs_f16_pct), f"{row.agreement:.0%}", f"{row.token_agreement:.0%}"]


def markdown_table(rows: list[VerifyRow]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rows_as_json(rows: list[VerifyRow]) -> list[dict]:
    return [asdict(r) for r in rows]
