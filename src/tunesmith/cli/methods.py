"""`tunesmith methods [--model M] [--markdown]`."""

from __future__ import annotations

import typer

from tunesmith.cli.common import app, out, print_table


def _size(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


@app.command()
def methods(model: str = typer.Option("default", "--model", help="base model to size the methods for (see model.base)"),
            markdown: bool = typer.Option(False, "--markdown",
                                          help="print the methods and options tables of docs/methods.md instead (no model needed)")):
    """List the fine-tuning methods: trainable parameters, memory, mergeability, GGUF export and options for a model."""
    if markdown:
        from tunesmith.methods.docs import options_markdown

        typer.echo(options_markdown())
        return
    from tunesmith.methods.docs import yaml_value
    from tunesmith.methods.inventory import inventory
    from tunesmith.methods.options import option_keys
    from tunesmith.methods.registry import METHODS

    rows = []
    footprints = inventory(model)
    for f in footprints:
        rows.append((f.name, _size(f.trainable), f"{f.trainable_percent:.3f}%", f"{f.memory_bytes / 2**30:.2f} GiB",
                     f"{METHODS[f.name].default_lr:g}", "yes" if f.mergeable else "no", "yes" if f.gguf_exportable else "no"))
    print_table(f"methods for {model}", ["method", "trainable", "of base", "memory*", "lr auto**", "mergeable", "GGUF"], rows)
    out.print("* weights + gradients + AdamW state in fp32 (4-bit base: 4.127 bits per quantized weight); "
              "activations excluded. Method keys at their defaults (method.r=16 ...).")
    out.print("** train.lr: auto uses this rate at hidden size 576, times sqrt(576/hidden) for wider models "
              "and 0.2 for preference objectives (docs/training.md)")
    for f in footprints:
        out.print(f"[bold]{f.name}[/bold]: {f.summary}", highlight=False)
        options = METHODS[f.name].options
        keys = [f"{k}={yaml_value(options.model_fields[k].get_default(call_default_factory=True))}" for k in option_keys(options)]
        out.print(f"  options: {', '.join(keys) or 'none'}", markup=False, highlight=False)
