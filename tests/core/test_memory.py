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


# A text model built and trained with torchvision kept out: transformers goes
# on without its image utilities, and the 160 MiB of torchvision stay unloaded.
TEXT_ONLY = """
import sys
import torch
from fish_fl.memory import keep_torchvision_out

assert keep_torchvision_out() and keep_torchvision_out()
from transformers import BertConfig, BertForSequenceClassification
cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, num_labels=2)
model = BertForSequenceClassification(cfg)
out = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([1]))
out.loss.backward()
try:
    import torchvision  # noqa: F401
except ModuleNotFoundError:
    print("kept-out", "torchvision" in sys.modules and sys.modules["torchvision"] is None)
"""

TOO_LATE = """
import transformers.modeling_utils
from fish_fl.memory import keep_torchvision_out
import sys
print(keep_torchvision_out(), sys.modules.get("torchvision") is not None)
"""


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    return done.stdout.strip()


@pytest.mark.slow
def test_a_text_model_trains_with_torchvision_kept_out() -> None:
    assert _run(TEXT_ONLY) == "kept-out True"


@pytest.mark.slow
def test_torchvision_is_not_kept_out_once_transformers_model_code_is_loaded() -> None:
    assert _run(TOO_LATE) == "False True"


def test_a_node_outside_a_ray_actor_never_keeps_torchvision_out() -> None:
    from clients.runtime import in_ray_actor

    assert in_ray_actor() is False
    assert sys.modules.get("torchvision", "absent") is not None  # this process may still use it
