"""Run a Flower simulation of a :class:`RunConfig` (Ray backend)."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

from fish_fl.config import RunConfig

__all__ = ["simulate"]

logger = logging.getLogger(__name__)


def simulate(
    config: RunConfig, run_dir: Path, *, verbose: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Run ``config`` as a simulation with ``num-clients`` SuperNodes; return the summary.

    The ServerApp runs in this process; ClientApps run in Ray actors with
    ``client-num-cpus`` CPUs (and ``client-num-gpus`` GPUs) each, on a local
    Ray started for the run, or with ``ray-address`` on that running cluster
    (:mod:`sims.ray_cluster`; the cluster outlives the run). With ``resume``,
    the run in ``run_dir`` continues after its last checkpoint.

    Pre-flight (:func:`fish_fl.preflight.preflight`) runs first, before Ray.
    If the simulation backend fails while the ServerApp still runs, the
    ServerApp is stopped at its next exchange with the nodes and this raises
    ``RuntimeError`` naming the backend's error, instead of leaving the
    ServerApp to wait out ``round-timeout`` (on Ctrl-C the ServerApp is
    stopped the same way and the interrupt goes on).
    """
    import json

    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from fish_fl.preflight import preflight
    from strategies.abort import AbortSignal
    from strategies.server_app import FAILURE, make_server_app

    from .ray_cluster import attach, detach, local_init_args

    preflight(config)
    if not verbose:
        _quiet_known_notices()
    os.environ["FISH_FL_SIMULATION"] = "1"  # clients size their torch thread pools
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    backend_config: dict[str, Any] = {
        "client_resources": {
            "num_cpus": config.client_num_cpus,
            "num_gpus": config.client_num_gpus,
        },
        "init_args": local_init_args(verbose),
    }
    if config.ray_address:
        attach(config, verbose=verbose)  # Flower's backend then finds Ray initialised
    abort = AbortSignal()
    threads_before = set(threading.enumerate())
    try:
        run_simulation(
            server_app=make_server_app(config, run_dir, resume=resume, abort=abort),
            client_app=client_app,
            num_supernodes=config.num_clients,
            backend_name="ray",
            backend_config=backend_config,  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
    except BaseException as e:
        # Flower re-raises the ServerApp's own error once the ServerApp has
        # returned; anything before that came from the backend (or Ctrl-C),
        # and the ServerApp thread would otherwise wait out round-timeout.
        if abort.server_done():
            raise
        interrupted = not isinstance(e, Exception)
        reason = (
            f"the simulation was interrupted ({type(e).__name__})"
            if interrupted
            else f"the simulation backend failed: {_root_cause(e)}"
        )
        logger.error("%s; stopping the ServerApp", reason)
        abort.abort(reason)
        abort.wait_for_server()
        # The ServerApp has returned; let the thread Flower ran it in finish too,
        # so that nothing of the run outlives this call.
        for thread in set(threading.enumerate()) - threads_before:
            if not thread.daemon:
                thread.join(timeout=30.0)
        if interrupted:
            raise
        raise RuntimeError(reason) from e
    finally:
        if config.ray_address:
            detach()  # Flower's backend disconnects too, unless it failed before that
    summary_path = run_dir / "summary.json"
    failure = run_dir / FAILURE
    if not summary_path.is_file() and failure.is_file():
        raise RuntimeError(f"the run stopped: {json.loads(failure.read_text())['reason']}")
    if not summary_path.is_file():
        raise RuntimeError(f"the simulation ended without a summary in {run_dir}")
    return dict(json.loads(summary_path.read_text()))


class _DropSimulationDeprecation(logging.Filter):
    """Flower warns on every ``run_simulation`` call; ``fish-fl run`` calls it on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("DEPRECATED FEATURE" in text and "run_simulation" in text)


def _quiet_known_notices() -> None:
    """Keep the terminal to what the user needs: no notice the user cannot act on.

    Flower's deprecation of ``run_simulation`` (the ``flwr run`` route of
    docs/deployment.md is the supported alternative) and Ray's tip about a
    future default for the GPU visibility of zero-GPU actors (fish-fl relies
    on today's default, which hides GPUs from clients that ask for none).
    """
    flwr_logger = logging.getLogger("flwr")
    if not any(isinstance(f, _DropSimulationDeprecation) for f in flwr_logger.filters):
        flwr_logger.addFilter(_DropSimulationDeprecation())
    warnings.filterwarnings(
        "ignore", message=r"Tip: In future versions of Ray", category=FutureWarning
    )


def _root_cause(error: BaseException) -> str:
    """The innermost error of a chain (Flower wraps the backend's twice), as one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
