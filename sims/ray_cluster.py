"""Attach a simulation to a running Ray cluster (``ray-address``), or keep it local.

Flower's Ray backend calls ``ray.init`` only when Ray is not initialised yet,
and then with a ``runtime_env`` of its own that carries only ``PYTHONPATH``.
Workers of a cluster started by ``ray start`` inherit that command's
environment, not this process's, so a simulation that attaches connects here,
first, with the variables its clients need, and checks that some node can
hold one client. ``ray.shutdown()`` (Flower's, at the end of the run, or
:func:`detach`) then only disconnects: Ray stops the processes of a cluster
only in the process that started them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from fish_fl.config import RunConfig

__all__ = ["attach", "detach", "local_init_args"]

#: Set in every client's environment on a cluster (clients size their torch thread pools).
CLIENT_ENV = {"FISH_FL_SIMULATION": "1"}


def local_init_args(verbose: bool) -> dict[str, Any]:
    """``init_args`` for Flower's own ``ray.init``: always a new local Ray.

    ``address="local"``: without it Ray would join a cluster that ``ray start``
    left running on this machine (or one named by ``RAY_ADDRESS``) instead.
    """
    return {"address": "local", "include_dashboard": False, "log_to_driver": verbose}


def attach(config: RunConfig, *, verbose: bool = False) -> None:
    """Connect to the cluster at ``config.ray_address``; raise ``ValueError`` if it cannot serve.

    The error is one line naming the address: no cluster there, or no alive
    node with ``client-num-cpus`` CPUs and ``client-num-gpus`` GPUs.
    """
    import ray

    address = config.ray_address
    pythonpath = os.pathsep.join(
        [*sys.path, *filter(None, [os.environ.get("PYTHONPATH", "")])]
    )  # as Flower's backend does, so that workers import this checkout
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **CLIENT_ENV}},
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.WARNING,
        )
    except (ConnectionError, RuntimeError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"ray-address={address}: cannot attach to a Ray cluster ({text})"
        ) from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n["Resources"].get("CPU", 0.0)) for n in nodes]
    gpus = [float(n["Resources"].get("GPU", 0.0)) for n in nodes]
    if not any(
        c >= config.client_num_cpus and g >= config.client_num_gpus
        for c, g in zip(cpus, gpus, strict=True)
    ):
        detach()
        raise ValueError(
            f"ray-address={address}: no node of the cluster has client-num-cpus="
            f"{config.client_num_cpus:g} CPUs and client-num-gpus={config.client_num_gpus:g} "
            f"GPUs ({len(nodes)} alive node(s), at most {max(cpus, default=0):g} CPUs and "
            f"{max(gpus, default=0):g} GPUs each)"
        )


def detach() -> None:
    """Disconnect from the cluster, if still connected; the cluster goes on running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
