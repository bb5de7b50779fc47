"""allocator.py: freed tensor memory is reused instead of faulting in fresh pages on every step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# A step's pattern: a few multi-megabyte temporaries allocated, written, freed, again and again.
STEPS = """
import resource, sys, torch
if sys.argv[1] == "on":
    from tunesmith.allocator import keep_freed_memory
    assert keep_freed_memory()
counts = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(4 << 20).fill_(1.0); b = torch.empty(3 << 20).fill_(1.0); c = torch.empty(5 << 20).fill_(1.0)
    del a, b, c
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(counts[-4:]))
"""


def _late_faults(mode: str, **env) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    return int(out.stdout.split()[-1])


@glibc
def test_steps_stop_faulting_in_fresh_pages():
    """Under glibc's defaults every step faults in most of its 48 MB of temporaries again (~12k pages);
    with the settings, once the heap has grown the last four steps fault in (almost) none."""
    assert _late_faults("off") > 4 * 2_000
    assert _late_faults("on") < 100


@glibc
def test_glibc_settings_of_the_user_win(monkeypatch):
    from tunesmith import allocator

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator._apply() is False
