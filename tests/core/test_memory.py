"""The fixed mmap threshold: a freed block of a few MiB goes back to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

# After a 16 MiB block is freed glibc serves 8 MiB blocks from the heap; the
# second one, freed below a live third, stays resident unless the threshold is fixed.
PROBE = """
import sys
import numpy as np
from fish_fl.memory import limit_heap_growth

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024

if sys.argv[1] == "fixed":
    assert limit_heap_growth() and limit_heap_growth()
big = np.ones(16 << 20, np.uint8); del big
a = np.ones(8 << 20, np.uint8); b = np.ones(8 << 20, np.uint8)
before = rss(); del a
print(before - rss())
"""


def _freed(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=True,
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_threshold_returns_freed_blocks() -> None:
    assert _freed("fixed") >= 7 << 20
    assert _freed("dynamic") < 1 << 20  # what the setting is for
