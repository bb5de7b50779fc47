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
for mb in range(2, 30, 2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(mb << 18).fill_(1.0)
    del block
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
SIZES_MB = list(range(2, 30, 2))
PAGES = sum(SIZES_MB) * 256                 # 4 KB pages written in all
LAST = 3                                    # the steps after the heap has grown to hold the blocks
LAST_PAGES = sum(SIZES_MB[-LAST:]) * 256


def _faults(mode: str) -> list[int]:
    """Page faults of each step, in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=clean)
    return [int(x) for x in out.stdout.split()[-len(SIZES_MB):]]


@glibc
def test_freed_blocks_are_reused_instead_of_mapped_fresh():
    """Under the defaults every page of every block is a fresh fault (measured: all 53,760, with native and
    AVX2 kernels, one or two threads). With the settings the heap keeps freed blocks: once it has grown to
    hold them, a step faults at most its growth. When that starts varies from process to process (2-core AMD
    EPYC, 2026-12-05, 36 runs: all pages of the first 6 to 11 blocks fault, 14.9k-34.3k pages in all, so a
    bound on the total failed a third of the time); the last three steps faulted 0-16 of their 78 MB in every
    run, against all 78 MB under the defaults."""
    off, on = _faults("off"), _faults("on")
    assert sum(off) >= 0.95 * PAGES and sum(off[-LAST:]) >= 0.95 * LAST_PAGES
    assert sum(on[-LAST:]) <= 0.4 * LAST_PAGES, on
    assert sum(on) < sum(off), (on, off)


@glibc
def test_glibc_settings_of_the_user_win(monkeypatch):
    from tunesmith import allocator

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator._apply() is False
