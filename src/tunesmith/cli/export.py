"""`tunesmith merge`, `tunesmith combine` and `tunesmith export gguf`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import app, out, print_table
from tunesmith.errors import UserError

export_app = typer.Typer(no_args_is_help=True, help="Export models for other runtimes (GGUF for llama.cpp / Ollama).")
app.add_typer(export_app, name="export")


@app.command()
def merge(adapter: Path = typer.Option(..., "--adapter", help="adapter folder (PEFT layout)"),
          out_dir: Path = typer.Option(..., "-o", "--out", help="merged model folder"),
          base: str | None = typer.Option(None, "--base", help="base model; default: the one the adapter names"),
          dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16")):
    """Merge an adapter into its base model: a plain HF folder for transformers, llama.cpp, vLLM.

    QLoRA adapters are merged into the full-precision base, never into 4-bit weights."""
    from tunesmith.export.merge import check_dtype, merge_adapter

    check_dtype(dtype)
    path = merge_adapter(adapter, out_dir, base=base, dtype=dtype)
    out.print(f"merged model written to {path}")


def _floats(spec: str, option: str) -> list[float]:
    try:
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option}: '{spec}' is not a comma-separated list of numbers", hint=f"e.g. {option} 0.6,0.4") from None


@app.command()
def combine(adapters: list[Path] = typer.Argument(..., help="two or more LoRA adapter folders on the same base"),
            out_dir: Path = typer.Option(..., "-o", "--out", help="folder for the combined adapter"),
            weights: str | None = typer.Option(None, "--weights", help="one weight per adapter, e.g. 0.6,0.4 "
                                                  "(default: equal weights summing to 1)"),
            method: str = typer.Option("linear", "--method", help="linear, cat, svd, ties, dare_linear, dare_ties"),
            density: float | None = typer.Option(None, "--density", help="kept fraction for ties / dare_*")):
    """Combine LoRA adapters into one (peft's weighted adapter combination)."""
    from tunesmith.export.combine import combine_adapters

    w = _floats(weights, "--weights") if weights else [1.0 / len(adapters)] * len(adapters)
    path = combine_adapters(adapters, w, out_dir, method=method, density=density)
    out.print(f"combined adapter ({method}, weights {','.join(f'{x:g}' for x in w)}) written to {path}")


@export_app.command("gguf")
def export_gguf_cmd(
        out_dir: Path = typer.Option(..., "-o", "--out", help="folder for the GGUF files and the Modelfile"),
        model: str | None = typer.Option(None, "--model", help="base model (default: the adapter's base, else 'default')"),
        adapter: Path | None = typer.Option(None, "--adapter", help="adapter folder: merged in, or see --lora-gguf"),
        quant: str = typer.Option("f16", "--quant", help="comma-separated: f32,f16,bf16,q8_0,q4_k_m,q5_k_m,q6_k,..."),
        lora_gguf: bool = typer.Option(False, "--lora-gguf", help="keep the adapter separate: base GGUFs + a "
                                       "llama.cpp LoRA adapter GGUF"),
        verify: bool = typer.Option(False, "--verify", help="run every file in llama.cpp and compare with torch"),
        verify_prompts: int = typer.Option(16, "--verify-prompts", help="prompts for the greedy-agreement check"),
        verify_tokens: int = typer.Option(24, "--verify-tokens", help="greedy tokens per prompt"),
        verify_text: Path | None = typer.Option(None, "--verify-text", help="held-out text for perplexity "
                                                   "(default: a built-in passage)"),
        tokenizer_pre: str | None = typer.Option(None, "--tokenizer-pre", help="force llama.cpp's pre-tokenizer name"),
        name: str | None = typer.Option(None, "--name", help="file name stem (default: model or run name)"),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for llama.cpp"),
        keep_f16: list[str] | None = typer.Option(None, "--keep-f16", help="regex of GGUF tensor names to leave in "
                                                     "f16 when quantizing, e.g. attn_v (repeatable)")):
    """Write GGUF files (llama.cpp / Ollama) with K-quants, an Ollama Modelfile, and optional verification."""
    from tunesmith.export.gguf import export_gguf
    from tunesmith.export.quantize import parse_quants
    from tunesmith.export.verify import TABLE_HEADER, table_cells

    qtypes = parse_quants(quant)   # fail on a typo before any weights load
    result = export_gguf(model, out_dir, qtypes, adapter=adapter, lora_gguf=lora_gguf, verify=verify,
                         verify_prompts=verify_prompts, verify_tokens=verify_tokens, verify_text=verify_text,
                         tokenizer_pre=tokenizer_pre, name=name, threads=threads, keep_f16=keep_f16, log=out.print)
    out.print(f"Modelfile: {result.modelfile}")
    if result.verify_rows:
        print_table("GGUF in llama.cpp vs torch", TABLE_HEADER, [table_cells(r) for r in result.verify_rows])
        out.print(f"table written to {Path(out_dir) / 'verify.md'}")
