"""Scale: memory and time per round at 10, 100 and 1,000 simulated clients.

Runs the default task (``sst2-minilm``, shortened) as a Ray simulation with
``clients-per-round`` nodes sampled each round, once per client count, each
in a fresh process, and prints one JSON line per count:

- ``driver_peak_mib``: the peak resident memory of the process that runs the
  ServerApp and Flower's simulation engine (``VmHWM``);
- ``client_peak_mib``: the largest peak resident memory of a Ray worker that
  ran ClientApps (``VmHWM`` of each, read while the run goes on);
  ``client_private_peak_mib``: the largest memory private to one such worker
  seen while polling (USS: resident pages no other process shares, so not
  the shared libraries' code); ``client_torchvision``: whether any of them
  had loaded torchvision;
- ``round_s``: wall time per round (rounds 2 on: round 1 also builds the mask);
- ``outside_share``: the share of a round's wall time outside local training
  and evaluation: 1 - (the clients' reported training time / the actors that
  ran in parallel + the server's evaluation) / round time. What is left is
  Flower, Ray, serialisation and the server's own work.

Usage::

    python benchmarks/bench_scale.py [--clients 10 100 1000] [--rounds 4] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

#: What marks a Ray worker process that hosts a ClientApp actor.
ACTOR_TITLE = "ClientAppActor"


def _hwm_bytes(proc: psutil.Process) -> int:
    """The peak resident memory of ``proc`` (Linux ``VmHWM``; its current RSS elsewhere)."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


class ClientMemory:
    """Polls the peak memory of this process's Ray workers that host ClientApps."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.peaks: dict[int, int] = {}
        self.private: dict[int, int] = {}
        self.torchvision = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ClientMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.sample(me)
            self._stop.wait(self.every)

    def sample(self, me: psutil.Process) -> None:
        for proc in me.children(recursive=True):
            try:
                title = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if ACTOR_TITLE in title:
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), _hwm_bytes(proc))
                try:
                    uss = int(proc.memory_full_info().uss)
                    maps = {m.path for m in proc.memory_maps(grouped=True)}
                except psutil.Error:
                    continue
                self.private[proc.pid] = max(self.private.get(proc.pid, 0), uss)
                self.torchvision |= any("torchvision" in path for path in maps)

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def outside_share(row: dict[str, Any], parallel: int) -> float | None:
    """The share of a round's wall time outside local training and the server's evaluation."""
    total = float(row.get("round_time") or 0.0)
    if total <= 0:
        return None
    inside = float(row.get("client_train_time", 0.0)) / max(1, parallel)
    return 1.0 - (inside + float(row.get("eval_time", 0.0))) / total


def run_measured(config: Any, run_dir: Path) -> dict[str, Any]:
    """Simulate ``config`` into ``run_dir``; the peak memory of this process and of the clients."""
    import resource

    from sims.simulate import simulate

    started = time.monotonic()
    with ClientMemory() as memory:
        simulate(config, run_dir)
    return {
        "driver_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "client_peak_mib": round(memory.peak / 2**20),
        "client_private_peak_mib": round(max(memory.private.values(), default=0) / 2**20),
        "client_torchvision": memory.torchvision,
        "actors": len(memory.peaks),
        "wall_s": round(time.monotonic() - started, 1),
    }


def measure(clients: int, sampled: int, sets: list[str]) -> dict[str, Any]:
    """One simulation of the default task at ``clients`` clients, in this process."""
    from sims.commands.run import load_preset

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        os.environ["FISH_FL_CACHE"] = str(Path(tmp) / "cache")
        config = load_preset(
            "sst2-minilm",
            [
                f"num-clients={clients}",
                f"clients-per-round={sampled}",
                "progress=false",
                f"out-dir={tmp}",
                *sets,
            ],
        )
        run_dir = Path(tmp) / "run"
        measured = run_measured(config, run_dir)
        rows = _rows(run_dir)[1:]
    parallel = min(measured["actors"] or 1, sampled)
    steady = rows[1:] or rows
    shares = [s for s in (outside_share(r, parallel) for r in steady) if s is not None]
    first = outside_share(rows[0], parallel)
    return {
        "clients": clients,
        "sampled": sampled,
        "rounds": len(rows),
        **measured,
        "round_s": round(sum(r["round_time"] for r in steady) / len(steady), 2),
        "round1_s": round(rows[0]["round_time"], 2),
        "outside_share": round(sum(shares) / len(shares), 4) if shares else None,
        "round1_outside_share": None if first is None else round(first, 4),
        "accuracy": rows[-1]["score"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--sampled", type=int, default=10, help="clients sampled per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="preset override key=value"
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sets = [f"rounds={args.rounds}", *args.sets]
    if args.one is not None:
        print(json.dumps(measure(args.one, args.sampled, sets)), flush=True)
        return
    # Each count in a fresh process: a process's peak memory only ever grows.
    for clients in args.clients:
        command = [sys.executable, __file__, "--one", str(clients), "--sampled", str(args.sampled)]
        command += ["--rounds", str(args.rounds)] + [f"--set={s}" for s in args.sets]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            print(json.dumps({"clients": clients, "error": " | ".join(tail)}), flush=True)
            continue
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
