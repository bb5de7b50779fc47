"""`tunesmith spectrum scan MODEL`: per-matrix signal-to-noise ratios and the Spectrum selection."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli.common import app, out, print_table

spectrum_app = typer.Typer(no_args_is_help=True, help="Spectrum: SNR of every weight matrix vs the Marchenko-Pastur bound.")
app.add_typer(spectrum_app, name="spectrum")


@spectrum_app.command("scan")
def scan(model: str = typer.Argument("default", help="base model (see model.base)"),
         top_percent: float = typer.Option(25.0, "--top-percent", help="percentage of matrices per type to select"),
         json_out: Path | None = typer.Option(None, "--json", help="also write the table as JSON (an infinite SNR is null with snr_infinite: true)")):
    """Print the SNR of each decoder weight matrix and which ones method spectrum would train."""
    from tunesmith.errors import UserError
    from tunesmith.io_utils import write_json
    from tunesmith.methods.spectrum import scan as run_scan
    from tunesmith.models import load_model, resolve_base

    if not 0 < top_percent <= 100:
        raise UserError(f"--top-percent: {top_percent} is not in (0, 100]")
    rows = run_scan(load_model(resolve_base(model), dtype="fp32"), top_percent)
    table = [(r.layer, r.type.rsplit(".", 1)[-1], "x".join(map(str, r.result.shape)), f"{r.result.sigma:.4g}", f"{r.result.edge:.4g}",
              r.result.n_signal, f"{r.result.snr:.4f}", "train" if r.selected else "") for r in rows]
    print_table(f"spectrum scan of {model} (top {top_percent:g}% per type)",
                ["layer", "type", "shape", "sigma", "MP edge", "above edge", "SNR", "selected"], table)
    chosen = sum(r.selected for r in rows)
    out.print(f"{chosen} of {len(rows)} matrices selected; train them with method.name=spectrum "
              f"method.spectrum_top_percent={top_percent:g}")
    if json_out is not None:
        write_json(json_out, [{"name": r.name, "type": r.type, "layer": r.layer, "selected": r.selected,
                               **r.result.as_dict()} for r in rows])
