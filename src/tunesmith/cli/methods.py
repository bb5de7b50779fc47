"""`tunesmith methods [--model M]`."""

from __future__ import annotations

import typer

from tunesmith.cli.common import app, out, print_table


def _size(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


@app.command()
def methods(model: str = typer.Option("default", "--model", help="base model to size the methods for (see model.base)")):
    """List the fine-tuning methods: trainable parameters, memory, mergeability and GGUF export for a model."""
    from tunesmith.methods.inventory import inventory

    rows = []
    footprints = inventory(model)
    for f in footprints:
        rows.append((f.name, _size(f.trainable), f"{f.trainable_percent:.3f}%", f"{f.memory_bytes / 2**30:.2f} GiB",
                     "yes" if f.mergeable else "no", "yes" if f.gguf_exportable else "no"))
    print_table(f"methods for {model}", ["method", "trainable", "of base", "memory*", "mergeable", "GGUF"], rows)
    out.print("* weights + gradients + AdamW state in fp32 (4-bit base: 4.127 bits per quantized weight); "
              "activations excluded. Method keys at their defaults (method.r=16 ...).")
    for f in footprints:
        out.print(f"[bold]{f.name}[/bold]: {f.summary}", highlight=False)
