"""Deployment engine end to end, on this machine: the recipe of docs/deployment.md.

A real ``flower-superlink`` and real ``flower-supernode`` processes on
127.0.0.1, TLS on (certificates from ``sims/deploy/make_certs.py``) and
SuperNode authentication on (keys registered with ``flwr supernode register``);
``flwr run`` submits a 2-round run of a tiny CIFAR-10 ResNet and the run folder
is checked. A SuperNode whose key was not registered is refused.

Every process gets its own ``FLWR_HOME`` and ``FISH_FL_CACHE``, as on separate
devices. Everything started here (and whatever those processes start: SuperExec,
``flwr-serverapp``, ``flwr-clientapp``) carries a marker in its environment and
is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from sims.deploy.make_certs import make_node_key, make_tls
from tests.conftest import PROJECT_ROOT
from tests.flower_harness import tiny_vision_config

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process clean-up reads /proc"
)

BIN = Path(sys.executable).parent
MARK = "FISH_FL_DEPLOYMENT_TEST"
CONNECTION = "fishnet"
NUM_NODES = 2
RUN_TIMEOUT = 150.0  # seconds for the whole 2-round run; it takes ~80 s on 2 cores


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- processes -----------------------------------------------------------------------


def _proc_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


@dataclass
class Processes:
    """Starts processes with a marker in their environment; stops all of them."""

    log_dir: Path
    env: dict[str, str]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**self.env, MARK: self.token}

    def start(self, name: str, args: Sequence[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **env},
            cwd=self.log_dir,
            start_new_session=True,  # its own process group, stopped as one
        )
        self.started[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"----- {name} -----\n{self.log(name)}" for name in self.started)

    def ours(self) -> set[int]:
        """Every live process we started, its descendants, and anything with our marker."""
        marker = f"{MARK}={self.token}".encode()
        parents: dict[int, int] = {}
        found = {p.pid for p in self.started.values() if p.poll() is None}
        for pid in _proc_pids():
            stat = _stat(pid)
            if stat is None or stat[0] in ("Z", "X") or pid == os.getpid():
                continue
            parents[pid] = stat[1]
            if _has_marker(pid, marker):
                found.add(pid)
        grew = True
        while grew:  # descendants whose environment was replaced
            new = {pid for pid, ppid in parents.items() if ppid in found} - found
            found |= new
            grew = bool(new)
        return {pid for pid in found if _alive(pid)}

    def stop_all(self, grace: float = 10.0) -> set[int]:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns what survived."""
        for proc in self.started.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for pid in self.ours():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.ours():
            time.sleep(0.2)
        for pid in self.ours():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for log in self._logs:
            log.close()
        time.sleep(0.5)
        return self.ours()


# -- the federation ------------------------------------------------------------------


@dataclass
class Federation:
    """A running SuperLink with TLS and SuperNode authentication, and its keys."""

    root: Path
    procs: Processes
    port: int
    ca_cert: Path
    node_keys: list[Path]  # private keys whose public keys are registered
    node_ids: list[int]  # as returned by `flwr supernode register`
    spare_key: Path  # a key pair that was never registered

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the `flwr` CLI as the operator (its own FLWR_HOME with the connection)."""
        env = {**self.procs.env, "FLWR_HOME": str(self.root / "home-operator")}
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=timeout,
        )

    def flwr_json(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        result = self.flwr(*args, "--format", "json", timeout=timeout)
        out = result.stdout
        assert result.returncode == 0 and "{" in out, (
            f"flwr {' '.join(args)} failed ({result.returncode}):\n{out}\n{result.stderr}"
        )
        data: dict[str, Any] = json.loads(out[out.index("{") :])
        assert data.get("success") is True, f"flwr {' '.join(args)}: {data}"
        return data

    def start_supernode(
        self, name: str, key: Path | None, partition: int
    ) -> subprocess.Popen[bytes]:
        home = self.root / f"home-{name}"
        args = [
            str(BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--root-certificates",
            str(self.ca_cert),
            "--node-config",
            f"partition-id={partition} num-partitions={NUM_NODES}",
            "--host",
            "127.0.0.1",
            "--port",
            str(_free_port()),  # the node's own Runtime API, for its ClientApp processes
        ]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        return self.procs.start(
            name, args, FLWR_HOME=str(home), FISH_FL_CACHE=str(home / "fish-fl-cache")
        )


def _wait_healthy(port: int, ca_cert: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    context = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/health", context=context, timeout=2
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"SuperLink not healthy after {timeout:.0f}s")
        time.sleep(0.3)


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The keys `flwr run --run-config` must change in [tool.flwr.app.config]."""
    with (PROJECT_ROOT / "pyproject.toml").open("rb") as f:
        app_config = tomllib.load(f)["tool"]["flwr"]["app"]["config"]
    out = {}
    for key, value in values.items():
        # Flower's run config holds scalars only: lists go as comma-separated strings.
        value = ",".join(value) if isinstance(value, list) else value
        if app_config.get(key, value) != value:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Certificates, keys, a SuperLink on a free loopback port, two registered keys."""
    root = tmp_path_factory.mktemp("deployment")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec & co.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    procs = Processes(root / "logs", env)
    try:
        # 1. Certificates and keys, as the operator makes them (sims/deploy/make_certs.py).
        tls = make_tls(root / "certs", ["localhost", "127.0.0.1"])
        keys = [make_node_key(root / "keys", f"supernode-{i}") for i in range(NUM_NODES)]
        spare = make_node_key(root / "keys", "intruder")

        # 2. The SuperLink: Fleet, Control and Runtime API on one TLS port.
        port = _free_port()
        superlink = procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(tls.ca_cert),
                "--ssl-certfile",
                str(tls.server_cert),
                "--ssl-keyfile",
                str(tls.server_key),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            FLWR_HOME=str(root / "home-superlink"),
            FISH_FL_CACHE=str(root / "home-superlink" / "fish-fl-cache"),
        )
        _wait_healthy(port, tls.ca_cert, superlink, timeout=60)

        # 3. The operator's `flwr` connection to it, and the registered keys.
        operator_home = root / "home-operator"
        operator_home.mkdir()
        (operator_home / "config.toml").write_text(
            tomli_w.dumps(
                {
                    "superlink": {
                        "default": CONNECTION,
                        CONNECTION: {
                            "address": f"127.0.0.1:{port}",
                            "root-certificates": str(tls.ca_cert),
                        },
                    }
                }
            )
        )
        fed = Federation(
            root, procs, port, tls.ca_cert, [k.private_key for k in keys], [], spare.private_key
        )
        for key in keys:
            reply = fed.flwr_json("supernode", "register", str(key.public_key), CONNECTION)
            fed.node_ids.append(int(reply["node-id"]))
        yield fed
    finally:
        survivors = procs.stop_all()
        assert not survivors, f"processes still running after SIGKILL: {sorted(survivors)}"


# -- the certificate script (fast) --------------------------------------------------


def test_make_certs_chain_and_names(tmp_path: Path) -> None:
    """server.pem chains to ca.crt and holds every requested name, plus the loopback ones."""
    from cryptography.x509 import DNSName, IPAddress, load_pem_x509_certificate
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    tls = make_tls(tmp_path, ["superlink.example.org", "10.1.2.3"])
    ca = load_pem_x509_certificate(tls.ca_cert.read_bytes())
    server = load_pem_x509_certificate(tls.server_cert.read_bytes())
    for name in (
        DNSName("superlink.example.org"),
        IPAddress(ipaddress.ip_address("10.1.2.3")),
        DNSName("localhost"),
        IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
        chain = verifier.verify(server, [])
        assert chain[-1] == ca
    other = PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName("elsewhere.org"))
    with pytest.raises(VerificationError):
        other.verify(server, [])
    for key in (tls.ca_key, tls.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError, match="--force"):
        make_tls(tmp_path, [])
    make_tls(tmp_path, [], force=True)
    with pytest.raises(ValueError, match="neither a host name"):
        make_tls(tmp_path / "bad", ["https://superlink:9092"])


def test_make_certs_node_keys_are_what_flower_reads(tmp_path: Path) -> None:
    """The private key loads as flower-supernode loads it, `flwr supernode register`
    takes the public key, and the two halves belong together."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    key = make_node_key(tmp_path, "supernode-0")
    private = load_ssh_private_key(key.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert try_load_public_key(key.public_key) == public_key_to_bytes(private.public_key())
    assert key.private_key.stat().st_mode & 0o777 == 0o600
    assert key.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(FileExistsError):
        make_node_key(tmp_path, "supernode-0")
    with pytest.raises(ValueError, match="plain file name"):
        make_node_key(tmp_path, "../escape")


def test_make_certs_command_line(tmp_path: Path) -> None:
    script = [sys.executable, str(PROJECT_ROOT / "sims" / "deploy" / "make_certs.py")]
    ok = subprocess.run(
        [*script, "node-keys", str(tmp_path), "--count", "2"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "supernode-0.key",
        "supernode-0.pub",
        "supernode-1.key",
        "supernode-1.pub",
    ]
    again = subprocess.run(
        [*script, "node-keys", str(tmp_path), "--count", "1"], capture_output=True, text=True
    )
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"make_certs: error: {tmp_path / 'supernode-0.key'} exists (use --force to replace it)"
    ]


# -- the deployment (slow) ------------------------------------------------------------


@pytest.mark.slow
@linux_only
def test_superlink_speaks_tls_with_the_project_ca_only(federation: Federation) -> None:
    url = f"https://127.0.0.1:{federation.port}/health"
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)
    with pytest.raises(OSError):  # no plain HTTP on the TLS port
        urllib.request.urlopen(f"http://127.0.0.1:{federation.port}/health", timeout=5)


@pytest.mark.slow
@linux_only
def test_unregistered_supernodes_are_refused(federation: Federation) -> None:
    """A key nobody registered, and no key at all: both nodes exit, neither joins."""
    intruder = federation.start_supernode("intruder", federation.spare_key, partition=0)
    keyless = federation.start_supernode("keyless", None, partition=1)
    for proc in (intruder, keyless):
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"an unauthorised SuperNode is still running:\n{federation.procs.logs()}")
    logs = federation.procs.logs()
    assert intruder.returncode != 0 and keyless.returncode != 0, logs
    intruder_log, keyless_log = federation.procs.log("intruder"), federation.procs.log("keyless")
    assert "Failed to activate SuperNode" in intruder_log, logs
    assert "SuperNode authentication is enabled" in keyless_log, logs
    assert "Exit Code: 305" in intruder_log and "Exit Code: 305" in keyless_log, logs
    assert "No SuperNode found with the given public key" in federation.procs.log(
        "superlink", tail=10**6
    )
    # The SuperLink knows only the registered nodes.
    nodes = federation.flwr_json("supernode", "list", CONNECTION)["nodes"]
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(federation.node_ids)


@pytest.mark.slow
@linux_only
def test_two_registered_supernodes_train_two_rounds(
    shared_data: Path, federation: Federation
) -> None:
    for i, key in enumerate(federation.node_keys):
        federation.start_supernode(f"supernode-{i}", key, partition=i)

    # 1. Both registered nodes come online.
    deadline = time.monotonic() + 60
    while True:
        nodes = federation.flwr_json("supernode", "list", CONNECTION)["nodes"]
        online = sorted(int(n["node-id"]) for n in nodes if n["status"] == "online")
        if online == sorted(federation.node_ids):
            break
        assert time.monotonic() < deadline, f"nodes online: {online}\n{federation.procs.logs()}"
        time.sleep(2)

    # 2. Submit the run: tiny ResNet-18 on real CIFAR-10, 2 rounds, run folder in tmp.
    out_dir = federation.root / "runs"
    config = tiny_vision_config(shared_data.resolve(), rounds=2, out_dir=str(out_dir))
    run_config = federation.root / "run-config.toml"
    run_config.write_text(tomli_w.dumps(_overrides(config.to_dict())))
    started = time.monotonic()
    reply = federation.flwr_json(
        "run", str(PROJECT_ROOT), CONNECTION, "--run-config", str(run_config)
    )
    run_id = reply["run-id"]

    # 3. Wait for the ServerApp's summary (written last), then for the run's status.
    summary_path = None
    while summary_path is None:
        found = sorted(out_dir.glob("*/summary.json"))
        if found:
            summary_path = found[0]
            break
        elapsed = time.monotonic() - started
        if elapsed > RUN_TIMEOUT or federation.procs.started["superlink"].poll() is not None:
            status = federation.flwr_json("ls", CONNECTION, "--run-id", str(run_id))
            pytest.fail(
                f"no summary.json after {elapsed:.0f}s; run: {status}\n{federation.procs.logs()}"
            )
        time.sleep(1)
    deadline = time.monotonic() + 30
    while True:
        run = federation.flwr_json("ls", CONNECTION, "--run-id", str(run_id))["runs"][0]
        if run["status"].startswith("finished") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert run["status"] == "finished:completed", (run, federation.procs.logs())

    # 4. The run folder: rounds 0..2, both nodes answered every round, nothing rejected.
    run_dir = summary_path.parent
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["replies"] == NUM_NODES and row["rejected"] == 0, row
        assert row["messages_down"] == NUM_NODES and row["messages_up"] == NUM_NODES, row
        # The server's ledger against the nodes' own measure of what they received: equal
        # but for metadata the SuperLink adds on the way (ids, timestamps), < 128 B a message.
        assert abs(row["node_bytes_received"] - row["bytes_down"]) < 128 * NUM_NODES, row
    assert rows[1]["mask_bytes"] > 0 and rows[2]["mask_bytes"] == 0  # the mask travels once
    summary = json.loads(summary_path.read_text())
    assert summary["final"]["round"] == 2
    assert len(summary["partitions"]["sizes"]) == NUM_NODES
    # The run config crossed `flwr run` and the SuperLink intact.
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
