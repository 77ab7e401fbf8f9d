"""The processes a task started (a bash task's shell and what it runs, a subprocess),
stopped with the try: politely after a timeout or a SIGTERM, at once (the whole process
group, the try too) when the try's state was changed from outside.

The try's log pump is a child too and is always spared: it must write everything.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from typing import Any

from ketch.worker.runner.output import stamped

_CHILD_GRACE_SECONDS = 3.0

_doomed: list[Any] = []  # psutil.Process snapshots taken when a timeout fired


def _descendants() -> list[Any]:
    import psutil

    from ketch.logs.pump import pump_pid

    spare = pump_pid()
    try:
        return [p for p in psutil.Process().children(recursive=True) if p.pid != spare]
    except psutil.Error:
        return []


def _signal_all(procs: list[Any], sig: int) -> None:
    import psutil

    for proc in procs:
        with suppress(psutil.Error):
            proc.send_signal(sig)


def doom_children() -> None:
    """The task's timeout fired: remember its processes as they are now (for
    :func:`kill_children`) and SIGTERM them, so a blocking wait on a child returns."""
    doomed = _descendants()
    _doomed.extend(doomed)
    _signal_all(doomed, signal.SIGTERM)


def kill_children() -> None:
    """Stop everything the task started: descendants and the rest of our process group.

    A bash task's ``sleep`` may already be orphaned (its bash was killed), so the
    snapshot taken when the timeout fired and a ``killpg`` of our own group (we are
    its leader when forked by the fork server) catch what ``children()`` no longer sees.
    """
    procs = {p.pid: p for p in [*_doomed, *_descendants()]}
    _signal_all(list(procs.values()), signal.SIGTERM)
    if os.getpgrp() == os.getpid():
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(os.getpgrp(), signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, previous)
    _signal_all(_wait_gone(list(procs.values()), _CHILD_GRACE_SECONDS), signal.SIGKILL)
    _doomed.clear()


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait until the processes are gone (or zombies nobody reaped yet); return the rest."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in procs:
            with suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def terminate_whole_group(last_line: str) -> None:
    """Kill the try and everything it started, now (its state was changed externally),
    with ``last_line`` as the last line of its log.

    This process stops writing first (its output so far is flushed, then fds 1 and 2
    go to /dev/null: the task's reaction to its children dying, a traceback, is not
    logged), the processes the task started are killed (SIGKILL: they write nothing
    more), the line is written, and the whole process group is killed, this one too.
    """
    from ketch.worker.task_log import drain_output

    drain_output()
    log_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    children = _descendants()
    _signal_all(children, signal.SIGKILL)
    _wait_gone(children, 1.0)
    with suppress(OSError):
        os.write(log_fd, (stamped(last_line) + "\n").encode())
    drain_output()  # a pod's tee reads the line from the pipe log_fd writes to
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # PID 1 of a container ignores its own SIGKILL
