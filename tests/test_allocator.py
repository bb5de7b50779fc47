"""allocator.py: freed tensor memory is reused instead of faulting in fresh pages on every step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunesmith.allocator import has_glibc

glibc = pytest.mark.skipif(not has_glibc(), reason="glibc only")

# Temporaries that grow with a step's shapes (a longer packed row, a wider batch): 2, 4, ... 28 MB, each
# written and freed. Under glibc's defaults each block is above the threshold the last free set, so each is
# fresh pages from the kernel.
STEPS = """
import resource, sys, torch
if sys.argv[1] == "on":
    from tunesmith.allocator import keep_freed_memory
    assert keep_freed_memory()
total = 0
for mb in range(2, 30, 2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(mb << 18).fill_(1.0)
    del block
    total += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(total)
"""
PAGES = sum(range(2, 30, 2)) * 256          # 4 KB pages written in all


def _faults(mode: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=clean)
    return int(out.stdout.split()[-1])


@glibc
def test_freed_blocks_are_reused_instead_of_mapped_fresh():
    """Under the defaults every page of every block is a fresh fault (measured: all 53,760, with native and
    AVX2 kernels, one or two threads); with the settings the heap keeps freed blocks and about half or fewer
    of the pages fault (18-27k; the rest is the heap growing and the 64-byte alignment PyTorch asks for)."""
    assert _faults("off") >= 0.95 * PAGES
    assert _faults("on") <= 0.6 * PAGES


@glibc
def test_glibc_settings_of_the_user_win(monkeypatch):
    from tunesmith import allocator

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator._apply() is False
