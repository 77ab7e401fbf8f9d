"""A try's process when it is not our child: who it is, and hearing when it ends.

After a scheduler restart (or a fork server's death) the local executor's tries are no
longer its children: their exit status cannot be learned and their pid may be reused.
A process is named by ``"pid:create_time"`` (the create time rules out a reused pid) and
watched through a pidfd, pinned before the identity check so there is no reuse race.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable

import psutil

from ketch.executors.base import RunningTry

# The local executor's logger: one name for everything it says.
log = logging.getLogger("ketch.executors.local")

# What a try records as its hostname at start (the runner calls socket.gethostname()).
HOSTNAME = socket.gethostname()


def parse_external_id(external_id: str | None) -> tuple[int, float] | None:
    """``"pid:create_time"`` -> (pid, create_time); None when absent or not ours."""
    if not external_id:
        return None
    pid, sep, created = external_id.partition(":")
    try:
        return (int(pid), float(created)) if sep else None
    except ValueError:
        return None


def same_process(pid: int, create_time: float) -> bool:
    """True when ``pid`` is alive and is the process created at ``create_time``."""
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 0.05
    except psutil.Error:
        return False


def started_process(running: RunningTry) -> tuple[int, float] | None:
    """(pid, create_time) of the process that started ``running`` on this machine, from
    what it recorded at ``try/start``; None when it is elsewhere, gone or not that process.

    A process created after the try started cannot be it (the pid was reused).
    """
    if running.pid is None or running.hostname != HOSTNAME:
        return None
    try:
        created = psutil.Process(running.pid).create_time()
    except psutil.Error:
        return None
    if running.started_at_epoch is not None and created > running.started_at_epoch + 0.05:
        return None
    return running.pid, created


class PidfdWatcher:
    """One selector thread over pidfds: hears when processes that are not our children exit."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[tuple[int, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="ketch-pidfd", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, pidfd: int, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` (on the watcher thread) when the pidfd's process ends; owns the fd."""
        with self._lock:
            self._pending.append((pidfd, on_exit))
        os.write(self._wake_w, b"x")

    def stop(self) -> None:
        self._stopped = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                os.close(key.fd)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _loop(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select():
                if key.data is None:
                    self._drain()
                    continue
                self._selector.unregister(key.fd)
                os.close(key.fd)
                try:
                    key.data()
                except Exception:
                    log.exception("pidfd exit callback failed")

    def _drain(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            pending, self._pending = self._pending, []
        for fd, callback in pending:
            self._selector.register(fd, selectors.EVENT_READ, callback)


def open_pidfd(pid: int, create_time: float) -> int | None:
    """A pidfd for the process ``pid`` created at ``create_time``; None if it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    if not same_process(pid, create_time):  # checked after pinning: no reuse race
        os.close(fd)
        return None
    return fd
