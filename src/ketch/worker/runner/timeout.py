"""A task's execution_timeout: TaskTimeout raised in the try's main thread, the task's
own processes told to stop with it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ketch.exceptions import TaskTimeout
from ketch.worker.runner.children import doom_children


@contextmanager
def execution_timeout(seconds: float | None) -> Iterator[None]:
    """Raise TaskTimeout in the main thread after ``seconds`` (setitimer, so sub-second works)."""
    if not seconds or seconds <= 0:
        yield
        return

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        doom_children()
        raise TaskTimeout(f"execution_timeout of {seconds:g}s exceeded")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
