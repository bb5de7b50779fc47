"""Signal-to-noise ratio of a weight matrix from its singular values (the Spectrum criterion).

A matrix of i.i.d. noise with entry scale sigma, shape m x n (m >= n, beta = n / m), has all its
singular values inside the Marchenko-Pastur bulk, whose upper edge is sigma * (sqrt(m) + sqrt(n)).
Singular values above that edge carry structure ("signal"). sigma is estimated robustly from the
median singular value, which a few large signal directions barely move (Gavish & Donoho 2014):

    sigma = median(s) / sqrt(m * mu_beta),  mu_beta = median of the MP law with ratio beta.

SNR = (energy of singular values above the edge) / (energy at or below it), energy = s^2. Pure
noise gives ~0; a planted low-rank signal well above the bulk gives a large value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch


@lru_cache(maxsize=256)
def mp_median(beta: float, points: int = 20001) -> float:
    """Median of the Marchenko-Pastur law (unit variance) with aspect ratio beta in (0, 1]."""
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    # x = a + (b - a)(1 - cos t)/2 turns the square-root edges of the density into a smooth
    # integrand: f(x) dx = ((b - a)/2)^2 sin^2 t / (2 pi beta x) dt, t in [0, pi].
    t = torch.linspace(0.0, math.pi, points, dtype=torch.float64)
    x = a + (b - a) * (1 - torch.cos(t)) / 2
    dens = ((b - a) / 2) ** 2 * torch.sin(t) ** 2 / (2 * math.pi * beta * x.clamp_min(1e-300))
    if a == 0.0:
        dens[0] = ((b - a) / 2) ** 2 / (2 * math.pi * beta) * 4 / (b - a)  # limit of sin^2 t / x at t -> 0
    cdf = torch.cumulative_trapezoid(dens, t)
    cdf = torch.cat([cdf.new_zeros(1), cdf]) / cdf[-1]
    i = int(torch.searchsorted(cdf, torch.tensor([0.5], dtype=torch.float64)))
    i = min(max(i, 1), points - 1)
    lo, hi = cdf[i - 1].item(), cdf[i].item()
    w = (0.5 - lo) / (hi - lo) if hi > lo else 0.0
    return float(x[i - 1] + w * (x[i] - x[i - 1]))


@dataclass
class MatrixSNR:
    shape: tuple[int, int]
    sigma: float          # estimated noise scale per entry
    edge: float           # MP upper edge for singular values
    n_signal: int         # singular values above the edge
    snr: float

    def as_dict(self) -> dict:
        """JSON-safe: strict JSON has no Infinity, so an infinite SNR is written as null with
        `snr_infinite` true (sort such rows above every finite one)."""
        return {"shape": list(self.shape), "sigma": self.sigma, "edge": self.edge, "n_signal": self.n_signal,
                "snr": self.snr if math.isfinite(self.snr) else None, "snr_infinite": self.snr == math.inf}


@torch.no_grad()
def matrix_snr(weight: torch.Tensor) -> MatrixSNR:
    w = weight.detach().to(torch.float32)
    if w.dim() != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(w.shape)}")
    m, n = max(w.shape), min(w.shape)
    s = torch.linalg.svdvals(w).double()              # (n,), descending
    beta = n / m
    sigma = float(s.median()) / math.sqrt(m * mp_median(round(beta, 6)))
    edge = sigma * (math.sqrt(m) + math.sqrt(n))
    above = s > edge
    signal = float((s[above] ** 2).sum())
    noise = float((s[~above] ** 2).sum())
    # No energy at or below the edge: a noise-free low-rank matrix is all signal (infinite SNR);
    # an all-zero matrix has neither and carries nothing to train for.
    snr = signal / noise if noise > 0 else math.inf if signal > 0 else 0.0
    return MatrixSNR((int(weight.shape[0]), int(weight.shape[1])), sigma, edge, int(above.sum()), snr)
