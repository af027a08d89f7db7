"""Live progress of a round while the server waits for replies.

A round of local training can take minutes with no output between the
table's rows. On a terminal, :class:`RoundProgress` keeps one line updated
in place (``round 3 train: 1/2 replies, 41 s``) and clears it before the
round's row is printed; when the output is not a terminal (a log file, CI)
it writes nothing, so logs are not flooded. Clients report nothing until
they reply (Flower's Message API has no channel for it), so the line counts
replies, not local steps.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["RoundProgress"]


class RoundProgress:
    """One in-place status line on a terminal; nothing elsewhere.

    Parameters
    ----------
    stream
        Where the line goes; used only if ``stream.isatty()``.
    delay
        Seconds a wait must last before the line appears (short waits stay silent).
    every
        Fewest seconds between two updates of the line.
    """

    def __init__(self, stream: TextIO, *, delay: float = 2.0, every: float = 1.0) -> None:
        isatty = getattr(stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self.stream = stream
        self.delay = delay
        self.every = every
        self._shown = 0
        self._last = -float("inf")

    def update(self, label: str, received: int, sent: int, elapsed: float) -> None:
        """Say how many of ``sent`` messages have been answered after ``elapsed`` seconds."""
        if not self.enabled or elapsed < self.delay:
            return
        now = time.monotonic()
        if now - self._last < self.every and received < sent:
            return
        self._last = now
        text = f"  {label}: {received}/{sent} replies, {elapsed:.0f} s"
        self.stream.write("\r" + text.ljust(self._shown))
        self.stream.flush()
        self._shown = len(text)

    def clear(self) -> None:
        """Remove the line, so what is printed next starts on a clean line."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
