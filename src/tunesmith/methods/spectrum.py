"""Spectrum (Hartford et al. 2024): full fine-tuning of only the weight matrices with the highest
signal-to-noise ratio. Matrices are grouped by type (q_proj, mlp.down_proj, ...), since SNR scales
differ between types, and the top `spectrum_top_percent` of each group train; everything else,
embeddings and head included, stays frozen."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from pydantic import Field

from tunesmith.methods.options import MethodOptions
from tunesmith.methods.registry import Method, Prepared, register_method, trainable_groups
from tunesmith.methods.snr import MatrixSNR, matrix_snr
from tunesmith.methods.targets import decoder_linears, layer_index, module_type


@dataclass
class ScanRow:
    name: str
    type: str
    layer: int
    result: MatrixSNR | None     # None on a meta-device model (shapes only, no values)
    selected: bool = False


def scan(model, top_percent: float) -> list[ScanRow]:
    """SNR of every decoder-block linear weight and the Spectrum selection, in model order."""
    rows = []
    for name, module in decoder_linears(model, "all-linear"):
        result = None if module.weight.is_meta else matrix_snr(module.weight)
        rows.append(ScanRow(name, module_type(name), layer_index(name), result))
    groups = defaultdict(list)
    for row in rows:
        groups[row.type].append(row)
    for members in groups.values():
        k = max(1, math.ceil(len(members) * top_percent / 100.0))
        # Without weights (meta device) only the count matters: all members share one shape.
        ranked = sorted(members, key=lambda r: -(r.result.snr if r.result else -r.layer))
        for row in ranked[:k]:
            row.selected = True
    return rows


class SpectrumOptions(MethodOptions):
    spectrum_top_percent: float = Field(25.0, gt=0.0, le=100.0, description="spectrum: train this percentage of matrices (highest SNR) per module type")


@register_method
class Spectrum(Method):
    name = "spectrum"
    summary = "full training of the highest-SNR weight matrices (top spectrum_top_percent per type, Marchenko-Pastur)"
    options = SpectrumOptions
    order = 100
    # full-weight updates like `full`, whose measured rate it shares
    default_lr = 1e-4
    kind = "full"

    def prepare(self, model, cfg, lr):
        self.check(cfg)
        rows = scan(model, cfg.spectrum_top_percent)
        chosen = {r.name for r in rows if r.selected}
        for p in model.parameters():
            p.requires_grad_(False)
        for name, module in model.named_modules():
            if name in chosen:
                for p in module.parameters(recurse=False):
                    p.requires_grad_(True)
        prepared = Prepared(model, trainable_groups(model, lr), kind=self.kind)
        prepared.spectrum_scan = rows
        return prepared
