"""benchmarks/gpu_suite.py --smoke: the GPU suite's code paths on CPU, without Flower or Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

#: What the GPU machine lacks: the suite must run without any of them.
ABSENT = ("flwr", "flwr_datasets", "ray", "datasets", "sklearn", "scipy")


def test_smoke_runs_without_flower_and_reports_consistent_rows(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    blocker = "; ".join(f"sys.modules[{name!r}] = None" for name in ABSENT)
    code = (
        f"import runpy, sys; {blocker}; "
        f"sys.argv = ['gpu_suite.py', '--smoke', '--json', {str(out)!r}]; "
        f"runpy.run_path({str(PROJECT_ROOT / 'benchmarks' / 'gpu_suite.py')!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # not the project root: the script finds the project itself
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu"
    rows = report["rows"]
    assert [(r["kind"], r["case"]) for r in rows] == [
        ("fisher", "bert-tiny"),
        ("step", "bert-tiny"),
        ("fisher", "resnet-tiny"),
        ("step", "resnet-tiny"),
    ]
    for r in rows:
        assert r["parameters"] > 0 and r["peak_gib"] is None  # no GPU memory on CPU
        if r["kind"] == "fisher":
            assert r["fast_s"] > 0 and r["plain_backward_s"] > 0 and r["loop_s"] > 0
            # Ratios are the rounded quotients of the printed seconds (within rounding).
            assert (
                abs(r["speedup_vs_loop"] - r["loop_s"] / r["fast_s"]) < 0.2 * r["speedup_vs_loop"]
            )
        else:
            # AdamW keeps two moments per trained entry: the sparse state is ~density of dense.
            assert abs(r["state_ratio"] - r["density"]) < 0.1 * r["density"]
            assert r["amp"] is False  # bfloat16 autocast is measured on CUDA only
    # The table names every case once per section.
    table = done.stdout
    assert table.count("| bert-tiny |") == 2 and table.count("| resnet-tiny |") == 2
