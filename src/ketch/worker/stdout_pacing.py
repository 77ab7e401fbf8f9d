"""Line buffering for a try's prints, except during bursts.

A try's ``sys.stdout``/``sys.stderr`` are line buffered, as in Airflow: a line is on the
log pump's pipe as soon as it is printed, so a follower sees it at once and a try killed
with SIGKILL loses nothing it printed. But one ``write(2)`` into a pipe per line costs
more than the print itself: a task printing 100k lines in a loop spends most of its time
in the pipe (``benchmarks.logs overhead``).

So a pacer thread watches how many writes reach the pipe. When a stream makes writes
faster than :data:`BURST_RATE` (checked every :data:`TICK_SECONDS`, and at once every
:data:`WAKE_EVERY` writes, so a burst is caught within a few hundred lines), it switches
that stream to block buffering and flushes it every tick; when less than
:data:`CALM_RATE` bytes per second come through, the stream goes back to line buffering. Lines printed during a burst
reach the log at most one tick later, and only those of the last tick can be lost if the
try is SIGKILLed in the middle of a burst (documented in docs/logging.md).

Why a thread and not a smarter stream: ``io.TextIOWrapper`` is written in C, and any
Python-level ``write`` wrapper would cost more per print than the pipe it saves. The
pacer only calls ``flush()``/``reconfigure()``, which CPython's text and buffered
streams support from another thread (the buffered writer holds its own lock, and the
text layer detaches its pending bytes before writing them, so order is kept).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

TICK_SECONDS = 0.025
# Writes per second: a person reading a log never notices the switch below that rate.
BURST_RATE = 2000
BURST_WRITES = 50  # and at least this many since the last check
CALM_RATE = 4096 / TICK_SECONDS  # bytes per second
WAKE_EVERY = 64  # a counting raw wakes the pacer every this many writes (a power of 2)


class CountingRaw(Protocol):
    """The raw file under a paced stream: counts the writes and bytes that reached it,
    and calls ``on_busy`` (when set) every :data:`WAKE_EVERY` writes."""

    writes: int
    written: int
    on_busy: Callable[[], None] | None


class PacedStream(Protocol):
    def flush(self) -> None: ...

    def reconfigure(self, *, line_buffering: bool | None = None) -> None: ...


@dataclass
class _Watched:
    stream: PacedStream
    raw: CountingRaw
    bursting: bool = False
    writes: int = 0
    written: int = 0
    checked_at: float = field(default_factory=time.monotonic)


@dataclass
class StdoutPacer:
    """The pacer of this process's paced streams (one daemon thread)."""

    tick: float = TICK_SECONDS
    watched: list[_Watched] = field(default_factory=list)
    # Held while a tick flushes: a fork waits for it, so the child never inherits a
    # stream lock held by the pacer thread (which does not exist in the child).
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, stream: PacedStream, raw: CountingRaw) -> None:
        self.watched.append(_Watched(stream, raw, writes=raw.writes, written=raw.written))
        raw.on_busy = self._wake.set

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ketch-stdout-pacer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Back to line buffering and flushed (the try is ending or forking)."""
        self._stop.set()
        self._wake.set()
        for item in self.watched:
            item.raw.on_busy = None
            self._calm(item)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self.lock:
                for item in self.watched:
                    with contextlib.suppress(Exception):  # a closed stream: nothing to pace
                        self.pace(item, time.monotonic())

    def pace(self, item: _Watched, now: float) -> None:
        """One check of one stream: flush a bursting stream, then decide its mode from
        the writes and bytes since the last check."""
        if item.bursting:
            item.stream.flush()
        writes, written = item.raw.writes, item.raw.written
        new_writes, new_bytes = writes - item.writes, written - item.written
        elapsed = max(now - item.checked_at, 1e-6)
        if not item.bursting:
            if new_writes >= BURST_WRITES and new_writes / elapsed >= BURST_RATE:
                item.stream.reconfigure(line_buffering=False)
                item.bursting = True
        elif elapsed < self.tick / 2:
            return  # woken early while bursting: too short a time to judge calm
        elif new_bytes / elapsed < CALM_RATE:
            self._calm(item)
        item.writes, item.written, item.checked_at = writes, written, now

    @staticmethod
    def _calm(item: _Watched) -> None:
        with contextlib.suppress(Exception):
            item.stream.reconfigure(line_buffering=True)  # flushes what is pending
        item.bursting = False


_pacer: StdoutPacer | None = None


def pace(streams: Sequence[tuple[PacedStream, CountingRaw]]) -> StdoutPacer:
    """Start pacing ``streams`` (the try's stdout and stderr) for this process.

    A forked child (``multiprocessing``, a task's own ``os.fork``) has no pacer thread,
    so its copies of the streams go back to line buffering."""
    global _pacer
    if _pacer is not None:
        _pacer.stop()
    _pacer = StdoutPacer()
    for stream, raw in streams:
        _pacer.watch(stream, raw)
    _pacer.start()
    return _pacer


def stop() -> None:
    """Flush and line-buffer the paced streams (before the try reports its end)."""
    if _pacer is not None:
        _pacer.stop()


def _before_fork() -> None:
    """Flush in the parent (the child must not inherit, and print again, pending
    lines) and hold the pacer still until the fork is done."""
    if _pacer is not None:
        _pacer.lock.acquire()
        for item in _pacer.watched:
            with contextlib.suppress(Exception):
                item.stream.flush()


def _after_fork_in_parent() -> None:
    if _pacer is not None:
        _pacer.lock.release()


def _after_fork_in_child() -> None:
    global _pacer
    if _pacer is not None:
        for item in _pacer.watched:
            StdoutPacer._calm(item)
        _pacer = None


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
