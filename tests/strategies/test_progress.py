"""Live round progress: one line updated in place on a terminal, nothing elsewhere."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

from strategies.abort import AbortableGrid, AbortSignal
from strategies.progress import RoundProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _SlowGrid:
    """Answers one pushed message per pull, with a clock that moves 5 s per pull."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.pending: list[str] = []

    def push_messages(self, messages: Any) -> list[str]:
        self.pending = [f"m{i}" for i, _ in enumerate(messages)]
        return list(self.pending)

    def pull_messages(self, ids: Any) -> list[Any]:
        self.clock[0] += 5.0
        if not self.pending:
            return []
        mid = self.pending.pop(0)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid))]


def _messages(n: int) -> list[Any]:
    meta = SimpleNamespace(group_id="3", message_type="train")
    return [SimpleNamespace(metadata=meta) for _ in range(n)]


def _run(stream: io.StringIO, monkeypatch: Any) -> list[Any]:
    import strategies.abort as abort_module
    import strategies.progress as progress_module

    clock = [0.0]
    fake_time = SimpleNamespace(monotonic=lambda: clock[0])
    monkeypatch.setattr(abort_module, "time", fake_time)
    monkeypatch.setattr(progress_module, "time", fake_time)
    signal = AbortSignal()
    monkeypatch.setattr(signal, "wait", lambda seconds: None)
    grid = AbortableGrid(_SlowGrid(clock), signal, progress=RoundProgress(stream))  # type: ignore[arg-type]
    return list(grid.send_and_receive(_messages(3), timeout=60))


def test_a_terminal_sees_replies_counted_in_place_and_then_a_clean_line(monkeypatch: Any) -> None:
    stream = _Terminal()
    replies = _run(stream, monkeypatch)
    assert len(replies) == 3
    text = stream.getvalue()
    # updated in place (carriage returns, no newlines), counting up to every reply
    assert "\n" not in text
    assert "round 3 train: 1/3 replies, 5 s" in text
    assert "round 3 train: 3/3 replies, 15 s" in text
    assert text.endswith("\r")  # cleared: the table row starts at column 0
    last = text.rstrip("\r").split("\r")[-1]
    assert last.strip() == ""


def test_nothing_is_written_when_the_output_is_not_a_terminal(monkeypatch: Any) -> None:
    stream = io.StringIO()
    assert len(_run(stream, monkeypatch)) == 3
    assert stream.getvalue() == ""


def test_short_waits_stay_silent() -> None:
    stream = _Terminal()
    progress = RoundProgress(stream, delay=2.0)
    progress.update("round 1 train", 1, 2, elapsed=0.5)
    progress.clear()
    assert stream.getvalue() == ""
