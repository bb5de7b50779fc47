"""allocator.py: freed tensor memory is reused instead of faulting in fresh pages on every step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# A training step's pattern: forward + backward of bf16 attention (train/matmul_attention.py) at 3 rows x
# 320 tokens allocates and frees ~40 MB of temporaries of several sizes per call.
STEPS = """
import resource, statistics, sys, torch
if sys.argv[1] == "on":
    from tunesmith.allocator import keep_freed_memory
    assert keep_freed_memory()
from tunesmith.train.matmul_attention import matmul_attention
g = torch.Generator().manual_seed(0)
q = torch.randn(3, 9, 320, 64, generator=g).bfloat16().requires_grad_()
k, v = [torch.randn(3, 3, 320, 64, generator=g).bfloat16().requires_grad_() for _ in range(2)]
grad = torch.randn(3, 9, 320, 64, generator=g).bfloat16()
counts = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    matmul_attention(q, k, v).backward(grad)
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(counts[2:]))
"""


def _steady_faults(mode: str) -> float:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=clean)
    return float(out.stdout.split()[-1])


@glibc
def test_steps_stop_faulting_in_fresh_pages():
    """Under glibc's defaults a call faults in thousands of fresh pages every time (measured: ~10,000, at
    least ~2,700); with the settings the heap keeps the freed blocks and a call faults in (almost) none."""
    assert _steady_faults("off") > 2_000
    assert _steady_faults("on") < 100


@glibc
def test_glibc_settings_of_the_user_win(monkeypatch):
    from tunesmith import allocator

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator._apply() is False
