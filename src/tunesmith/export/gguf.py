"""`export gguf`: model (+ adapter) -> GGUF files of the requested types, Modelfile, optional verification.

Flow: load the torch model in fp32 (merging the adapter, unless --lora-gguf keeps it separate) ->
write f16 (and f32/bf16 when asked) ourselves -> llama.cpp quantizes the f16 into each other type ->
Modelfile -> --verify runs every file in llama.cpp against the torch model.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.export.quantize import QUANT_TYPES, QuantType, check_keep_patterns, parse_quants, quantize_file
from tunesmith.io_utils import atomic_file


@dataclass
class ExportResult:
    files: dict[str, Path]
    lora: Path | None
    modelfile: Path
    verify_rows: list = field(default_factory=list)
    tokenizer_agreement: float | None = None


@dataclass
class Source:
    model: object          # the torch model llama.cpp's output is compared with (merged, or peft with adapter)
    export_model: object   # what goes into the model GGUF (merged, or the bare base for --lora-gguf)
    tokenizer: object
    model_dir: Path        # folder holding tokenizer.json
    name: str
    peft_model: object | None = None


def _same_base(recorded: str | None, given: str) -> bool:
    from tunesmith.models import resolve_base

    if not recorded:
        return True
    try:
        return resolve_base(recorded).path.resolve() == resolve_base(given).path.resolve()
    except UserError:
        return True   # the recorded base moved away; the shape check on loading still guards us


def load_source(model: str | None, adapter: str | Path | None, lora_gguf: bool) -> Source:
    from tunesmith.export.merge import adapter_base, load_adapter_model, merge_model
    from tunesmith.models import load_model, load_tokenizer, resolve_base

    if adapter is None:
        if lora_gguf:
            raise UserError("--lora-gguf needs --adapter", hint="pass the adapter folder to export as a llama.cpp LoRA")
        resolved = resolve_base(model or "default")
        tokenizer = load_tokenizer(resolved)
        torch_model = load_model(resolved, dtype="fp32").eval()
        return Source(torch_model, torch_model, tokenizer, resolved.path, resolved.path.name)
    adapter = Path(adapter)
    recorded = adapter_base(adapter)
    if model and not _same_base(recorded, model):
        raise UserError(f"{adapter}: adapter was trained on '{recorded}' but --model is '{model}'",
                        hint="omit --model to use the adapter's own base, or pass the base it was trained on")
    peft_model, tokenizer, base = load_adapter_model(adapter, model)
    peft_model.eval()
    resolved = resolve_base(base)
    name = adapter.parent.name if adapter.name == "adapter" else adapter.name
    if lora_gguf:
        return Source(peft_model, peft_model.get_base_model(), tokenizer, resolved.path, name, peft_model)
    merged = merge_model(peft_model, "fp32").eval()
    return Source(merged, merged, tokenizer, resolved.path, name)


def export_gguf(model: str | None, out_dir: str | Path, quants: str | list[QuantType] = "f16", *,
                adapter: str | Path | None = None, lora_gguf: bool = False, verify: bool = False,
                verify_prompts: int = 16, verify_tokens: int = 24, verify_text: str | Path | None = None,
                tokenizer_pre: str | None = None, name: str | None = None, threads: int | None = None,
                keep_f16: list[str] | None = None, log=print) -> ExportResult:
    from tunesmith.export.gguf_write import write_lora_gguf, write_model_gguf
    from tunesmith.export.modelfile import write_modelfile
    from tunesmith.export.verify import build_inputs, check_verify_options

    qtypes = parse_quants(quants) if isinstance(quants, str) else list(quants)
    keep_f16 = check_keep_patterns(list(keep_f16 or []))
    text, source = None, "built-in held-out text"
    if verify:
        check_verify_options(verify_prompts, verify_tokens)
    if verify_text is not None:
        path = Path(verify_text)
        if not path.is_file():
            raise UserError(f"--verify-text: {path} does not exist", hint="pass a UTF-8 text file")
        text, source = path.read_text(encoding="utf-8-sig"), f"--verify-text {path}"
    src = load_source(model, adapter, lora_gguf)
    # Tokenized now, so a text too short to measure fails before minutes of writing and quantizing.
    inputs = build_inputs(src.tokenizer, n_prompts=verify_prompts, new_tokens=verify_tokens, text=text,
                          source=source) if verify else None
    stem = name or src.name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    files: dict[str, Path] = {}
    written = {q.name for q in qtypes if q.written}
    needs_f16 = any(not q.written for q in qtypes)
    for ftype in ("f32", "f16", "bf16"):
        if ftype in written:
            files[ftype] = write_model_gguf(src.export_model, src.tokenizer, src.model_dir,
                                            out_dir / f"{stem}-{ftype}.gguf", ftype, stem, tokenizer_pre)
            log(f"wrote {files[ftype]}")
    scratch = None
    if needs_f16 and "f16" not in files:
        scratch = write_model_gguf(src.export_model, src.tokenizer, src.model_dir,
                                   out_dir / f".{stem}-f16-source.gguf", "f16", stem, tokenizer_pre)
    try:
        for q in qtypes:
            if not q.written:
                files[q.name] = quantize_file(files.get("f16") or scratch, out_dir / f"{stem}-{q.name}.gguf", q,
                                              threads, keep_f16)
                log(f"wrote {files[q.name]}")
    finally:
        if scratch is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(scratch)
    files = {q.name: files[q.name] for q in qtypes}   # in the order asked

    lora_path = None
    if lora_gguf:
        lora_path = write_lora_gguf(src.peft_model, out_dir / f"{stem}-lora.gguf", name=f"{stem}-lora")
        log(f"wrote {lora_path}")
    first = next(iter(files.values()))
    modelfile = write_modelfile(out_dir, first.name, src.tokenizer, lora_path.name if lora_path else None,
                                [p.name for p in list(files.values())[1:]])
    result = ExportResult(files, lora_path, modelfile)
    if verify:
        run_verify(result, src, out_dir, inputs, threads, log, keep_f16)
    return result


def run_verify(result: ExportResult, src: Source, out_dir: Path, inputs, threads: int | None, log,
               keep_f16: list[str]) -> None:
    from tunesmith.export.heldout import VERIFY_PROMPTS
    from tunesmith.export.verify import markdown_table, rows_as_json, tokenizer_agreement, torch_reference, verify_files

    n_tokens = inputs.new_tokens
    first = next(iter(result.files.values()))
    samples = VERIFY_PROMPTS + [src.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False)
                                for p in VERIFY_PROMPTS[:4] if getattr(src.tokenizer, "chat_template", None)]
    result.tokenizer_agreement = tokenizer_agreement(first, src.tokenizer, samples)
    log(f"tokenizer: llama.cpp matches the HF tokenizer on {result.tokenizer_agreement:.0%} of {len(samples)} texts")
    reference = torch_reference(src.model, inputs)
    rows = verify_files(result.files, reference, inputs, result.lora, threads, log)
    if keep_f16:   # the quantized rows are not llama.cpp's stock mix: say so in the table
        for row in rows:
            if row.type in QUANT_TYPES and not QUANT_TYPES[row.type].written:
                row.type += " (f16: " + ", ".join(keep_f16) + ")"
    result.verify_rows = rows
    n_tok = sum(len(c) for c in inputs.chunks)
    header = (f"Verification in llama.cpp against torch fp32: perplexity on {n_tok} held-out tokens, greedy "
              f"continuations of {n_tokens} tokens on {len(inputs.prompts)} prompts"
              + (f", LoRA {result.lora.name} applied" if result.lora else "")
              + f"; tokenizer agreement {result.tokenizer_agreement:.0%}.\n\n")
    with atomic_file(out_dir / "verify.md") as fh:
        fh.write(header + markdown_table(rows))
    with atomic_file(out_dir / "verify.json") as fh:
        json.dump({"tokens": n_tok, "prompts": len(inputs.prompts), "new_tokens": n_tokens,
                   "tokenizer_agreement": result.tokenizer_agreement, "rows": rows_as_json(rows)}, fh, indent=2)
