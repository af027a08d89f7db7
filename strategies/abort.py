"""Stopping a ServerApp from outside when the simulation backend under it has failed.

In a Flower simulation the ServerApp runs in a thread of its own while the
backend (Ray) runs in the caller's. When the backend fails (no actor fits the
client resources, Ray cannot start), ``run_simulation`` raises in the caller
at once, but the ServerApp thread is left waiting for replies that will never
come, for up to ``round-timeout`` per round, and the process cannot exit
before it ends. :class:`AbortSignal` lets the caller tell the ServerApp why it
must stop; :class:`AbortableGrid` is the grid the ServerApp talks through,
which raises :class:`~strategies.fish_strategy.RunFailed` with that reason at
the next exchange, or within :data:`POLL` seconds while it waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # type: ignore[attr-defined]
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from .fish_strategy import RunFailed
from .progress import RoundProgress

__all__ = ["POLL", "AbortSignal", "AbortableGrid"]

#: Seconds between two looks for replies (Flower's in-memory grid uses the same).
POLL = 0.1


class AbortSignal:
    """Set once, from any thread, with the reason the ServerApp must stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._started = threading.Event()
        self._done = threading.Event()
        self.reason = ""

    # -- the side that stops -----------------------------------------------------
    def abort(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def server_done(self) -> bool:
        """True once a ServerApp bound to this signal has returned (or raised)."""
        return self._done.is_set()

    def wait_for_server(self, timeout: float | None = None) -> bool:
        """Wait until the ServerApp has returned (or raised); False on timeout."""
        return self._done.wait(timeout) if self._started.is_set() else True

    # -- the ServerApp's side ------------------------------------------------------
    def server_started(self) -> None:
        self._started.set()
        self.check()

    def server_finished(self) -> None:
        self._done.set()

    def check(self) -> None:
        """Raise :class:`RunFailed` if the run was aborted."""
        if self._event.is_set():
            raise RunFailed(self.reason)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; raise at once if the run is aborted meanwhile."""
        if self._event.wait(seconds):
            self.check()


class AbortableGrid(Grid):
    """A grid that delegates to Flower's and gives up as soon as ``signal`` is set."""

    def __init__(
        self, grid: Grid, signal: AbortSignal, progress: RoundProgress | None = None
    ) -> None:
        self.grid = grid
        self.signal = signal
        self.progress = progress

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        self.signal.check()
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        self.signal.check()
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.signal.check()
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.signal.check()
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until every reply is in or ``timeout`` passes (as Flower's grids)."""
        messages = list(messages)
        label = _label(messages) if self.progress is not None else ""
        waiting = set(self.push_messages(messages))
        sent = len(waiting)
        start = time.monotonic()
        end = None if timeout is None else start + timeout
        replies: list[Message] = []
        try:
            while waiting:
                got = list(self.pull_messages(waiting))
                replies.extend(got)
                waiting.difference_update(m.metadata.reply_to_message_id for m in got)
                if self.progress is not None:
                    self.progress.update(label, sent - len(waiting), sent, time.monotonic() - start)
                if not waiting or (end is not None and time.monotonic() >= end):
                    break
                self.signal.wait(POLL)
        finally:
            if self.progress is not None:
                self.progress.clear()
        return replies


def _label(messages: list[Message]) -> str:
    """``round 3 train``: the round (Flower's group id) and the kind of the messages."""
    if not messages:
        return "waiting"
    meta = getattr(messages[0], "metadata", None)
    if meta is None:
        return "waiting"
    kind = str(meta.message_type).split(".")[0]
    return f"round {meta.group_id} {kind}" if meta.group_id else kind
