"""Memory flat in the number of clients: 100 clients against 10, ten sampled per round.

Each run is a fresh process (a process's peak memory only grows), a real Ray
simulation of the tiny CIFAR ResNet; the peaks are those
``benchmarks/bench_scale.py`` reports for the default task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

RUN = """
import json, sys
from pathlib import Path
from benchmarks.bench_scale import run_measured
from tests.flower_harness import tiny_vision_config
clients, data, out = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
config = tiny_vision_config(
    data, num_clients=clients, clients_per_round=10, rounds=2, train_examples=1000,
    out_dir=str(out),
)
print(json.dumps(run_measured(config, out / "run")))
"""


def _peaks(clients: int, shared_data: Path, tmp_path: Path) -> dict[str, int]:
    out = tmp_path / str(clients)
    env = {**os.environ, "FISH_FL_CACHE": str(out / "cache"), "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(clients), str(shared_data), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [json.loads(r) for r in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["replies"] for r in rows[1:]] == [10, 10]
    return dict(measured)


@pytest.mark.slow
def test_peak_memory_flat_from_10_to_100_clients(shared_data: Path, tmp_path: Path) -> None:
    ten, hundred = _peaks(10, shared_data, tmp_path), _peaks(100, shared_data, tmp_path)
    assert ten["actors"] > 0 and hundred["actors"] > 0, (ten, hundred)
    for key in ("driver_peak_mib", "client_peak_mib"):
        assert hundred[key] <= 1.10 * ten[key], (key, ten, hundred)
