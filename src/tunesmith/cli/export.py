"""`tunesmith merge` (and, later, combine and export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli.common import app, out
from tunesmith.errors import UserError


@app.command()
def merge(adapter: Path = typer.Option(..., "--adapter", help="adapter folder (PEFT layout)"),
          out_dir: Path = typer.Option(..., "-o", "--out", help="merged model folder"),
          base: Optional[str] = typer.Option(None, "--base", help="base model; default: the one the adapter names"),
          dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16")):
    """Merge an adapter into its base model: a plain HF folder for transformers, llama.cpp, vLLM."""
    from tunesmith.export.merge import DTYPES, merge_adapter

    if dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{dtype}'", hint=f"use one of {', '.join(DTYPES)}")
    path = merge_adapter(adapter, out_dir, base=base, dtype=dtype)
    out.print(f"merged model written to {path}")
