"""A simulation attached to a running Ray cluster (``ray-address``).

The slow test starts a two-node cluster on this machine with ``ray start``
(a head, and a second node joining it by address), runs two rounds on it and
stops every process the two ``ray start`` calls left behind. Each call runs
in a session of its own, so those processes (GCS, raylets, agents, workers,
the clients' actors) are exactly the ones in these two sessions; nothing
else on the machine is touched (``ray stop`` would stop every Ray here).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from fish_fl.config import ConfigError, RunConfig
from fish_fl.preflight import PreflightError, check_resources
from tests.flower_harness import tiny_vision_config

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackCluster:
    """Ray nodes started by ``ray start`` on this machine, each in its own session."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.sessions: list[int] = []  # the session id of each node: its `ray start`'s pid
        self.address = ""

    def add_node(self) -> None:
        """Start the head (first call) or a node joining it, with ports of its own."""
        worker_ports = _free_port()
        command = [
            str(RAY),
            "start",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--object-store-memory={100 * 2**20}",  # two nodes fit in a small machine
            "--disable-usage-stats",
            f"--node-manager-port={_free_port()}",
            f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--min-worker-port={worker_ports}",
            f"--max-worker-port={worker_ports + 30}",
        ]
        if not self.address:
            port = _free_port()
            command += [
                "--head",
                f"--port={port}",
                f"--ray-client-server-port={_free_port()}",
                # Its own temp dir: a plain ray.init() elsewhere on this machine
                # must not find this cluster (Ray looks for the last `ray start`).
                f"--temp-dir={self.root}",
                "--include-dashboard=false",
            ]
        else:
            command.append(f"--address={self.address}")
        log = self.root / f"node{len(self.sessions)}.log"
        with log.open("w") as out:
            started = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.sessions.append(started.pid)
            code = started.wait(timeout=300)
        assert code == 0, f"ray start failed:\n{log.read_text()[-3000:]}"
        if not self.address:
            self.address = f"127.0.0.1:{port}"

    def processes(self) -> list[psutil.Process]:
        """Every live process in the nodes' sessions."""
        found = []
        for process in psutil.process_iter():
            try:
                ours = os.getsid(process.pid) in self.sessions and process.pid != os.getpid()
                if ours and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return found

    def stop(self) -> list[str]:
        """Terminate, then kill, every process of the nodes; what survives (should be nothing)."""
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            alive = self.processes()
            for process in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(sig)
            psutil.wait_procs(alive, timeout=grace)
        return [f"{p.pid} {p.name()}" for p in self.processes()]


class ActorWatch:
    """Which node (session) each of the clients' Ray actors ran under, sampled while it runs."""

    def __init__(self, cluster: LoopbackCluster) -> None:
        self.cluster = cluster
        self.sessions: set[int] = set()
        self.flags: set[str | None] = set()  # FISH_FL_SIMULATION in the actors' environment
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            for process in self.cluster.processes():
                try:
                    if "ClientAppActor" in " ".join(process.cmdline()):
                        self.sessions.add(os.getsid(process.pid))
                        self.flags.add(process.environ().get("FISH_FL_SIMULATION"))
                except (psutil.Error, ProcessLookupError):
                    continue

    def __enter__(self) -> ActorWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
@pytest.mark.ray
def test_two_rounds_on_a_two_node_cluster(shared_data: Path) -> None:
    import ray

    from sims.ray_cluster import attach, detach
    from sims.simulate import simulate

    if not RAY.is_file():
        pytest.skip(f"no ray command beside {sys.executable}")
    # Short: Ray's socket paths under the temp dir must stay below ~100 characters.
    root = Path(tempfile.mkdtemp(prefix="fishray"))
    # Workers of a `ray start` node inherit its environment, not the driver's.
    env = {**os.environ, "FISH_FL_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("FISH_FL_SIMULATION", None)  # must reach the clients from the run, not from here
    cluster = LoopbackCluster(root, env)
    started = time.monotonic()
    try:
        cluster.add_node()
        cluster.add_node()
        config = tiny_vision_config(
            shared_data, rounds=2, ray_address=cluster.address, out_dir=str(root)
        )
        run_dir = root / "run"
        with ActorWatch(cluster) as watch:
            summary = simulate(config, run_dir)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert all(r["replies"] == 2 and r["rejected"] == 0 for r in rows[1:])
        assert summary["final"]["round"] == 2
        # One client actor per node: both nodes served, and no Ray of its own.
        assert watch.sessions == set(cluster.sessions)
        assert watch.flags == {"1"}  # the run's environment reached the cluster's workers

        # The run detached and left the cluster running: both nodes still alive.
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            assert sum(bool(n["Alive"]) for n in ray.nodes()) == 2
        finally:
            ray.shutdown()
        # A client no node can hold is refused before anything starts.
        with pytest.raises(ValueError, match=r"no node of the cluster has client-num-cpus=2 "):
            attach(config.replace(client_num_cpus=2.0))
        assert not ray.is_initialized()
    finally:
        # Also when the run failed: then this reports survivors beside the run's error.
        detach()
        survivors = cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert survivors == [], f"processes of the test's Ray cluster survive: {survivors}"
    assert time.monotonic() - started < 600


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("localhost", "expected '' (a local Ray), auto, or HOST:PORT"),
        ("head:port", "expected '' (a local Ray), auto, or HOST:PORT"),
        (":6379", "expected '' (a local Ray), auto, or HOST:PORT"),
        ("head:70000", "port 70000 is not in 1..65535"),
        ("ray://head:10001", "Ray Client addresses (ray://) are not supported"),
    ],
)
def test_bad_ray_address_is_a_config_error(address: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^ray-address=") as error:
        RunConfig.from_mapping({"ray-address": address})
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("address", ["", "auto", "10.0.0.5:6379", "head-node:6379", "[::1]:6379"])
def test_good_ray_addresses(address: str) -> None:
    assert RunConfig.from_mapping({"ray-address": address}).ray_address == address


def test_unreachable_head_is_refused_at_preflight() -> None:
    port = _free_port()  # nothing listens there
    config = RunConfig.from_mapping({"ray-address": f"127.0.0.1:{port}"})
    started = time.monotonic()
    with pytest.raises(PreflightError, match=rf"^ray-address=127.0.0.1:{port}: no Ray head node"):
        check_resources(config)
    assert time.monotonic() - started < 10  # Ray itself would retry for minutes


def test_cli_unreachable_head_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    port = _free_port()
    result = subprocess.run(
        [sys.executable, "-m", "sims.cli", "run", "sst2-minilm", "--set"]
        + [f"ray-address=127.0.0.1:{port}", "--out", str(tmp_path / "never")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("fish-fl: error:")]
    assert errors == [
        f"fish-fl: error: ray-address=127.0.0.1:{port}: no Ray head node answers there "
        f"(Connection refused); start one with `ray start --head --port {port}` or fix the address"
    ], result.stderr
    assert not (tmp_path / "never").exists()


def test_attached_run_leaves_resources_to_the_cluster() -> None:
    """More CPUs per client than this machine has is the cluster's business, not pre-flight's."""
    with socket.socket() as listener:  # stands in for a head node
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        many = float((os.cpu_count() or 1) + 1)
        check_resources(RunConfig.from_mapping({"ray-address": address, "client-num-cpus": many}))
    with pytest.raises(PreflightError, match="client-num-cpus"):
        check_resources(RunConfig.from_mapping({"client-num-cpus": many}))


def test_attach_names_the_address_when_ray_cannot_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from sims.ray_cluster import attach

    def refuse(**kwargs: object) -> None:
        assert kwargs["address"] == "auto"
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify ...")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ValueError) as error:
        attach(RunConfig.from_mapping({"ray-address": "auto"}))
    assert str(error.value) == (
        "ray-address=auto: cannot attach to a Ray cluster "
        "(Could not find any running Ray instance.)"
    )


def test_local_ray_never_joins_a_running_cluster() -> None:
    """Without ray-address, Flower's ray.init starts a new Ray even if one runs here."""
    from sims.ray_cluster import local_init_args

    assert local_init_args(verbose=False)["address"] == "local"
