"""The try's side of its log pump: fork it, forward secrets, ask it, wait for it.

What a try calls (through ``ketch.logs.pump``): :func:`start` once, before anything else
runs, then :func:`current` for its handle. Kept apart from the pump's own loop
(``process``) because it runs in the try, the loop in the forked pump.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
from contextlib import suppress

from ketch.logs.pump.config import PumpConfig
from ketch.logs.pump.control import recv_message, send_message
from ketch.logs.pump.process import Pump

_ACK_TIMEOUT = 5.0


class PumpHandle:
    """The try's end of its pump: forwards secrets, asks for problems, waits at exit."""

    def __init__(
        self, pid: int, control: socket.socket, saved_stdout: int | None, config: PumpConfig
    ) -> None:
        self.pid = pid
        self.config = config
        self._control = control
        self._lock = threading.Lock()
        self._saved_stdout = saved_stdout
        self._finished = False
        self._unanswered = 0  # calls that gave up waiting: their answers come first

    def _call(self, message: bytes) -> bytes | None:
        """Send ``message``; the pump's answer, or None when it did not come in time.

        The pump answers every message, in order: an answer that comes after its call
        gave up is read and dropped by the next call, never taken for that call's own
        answer (a late ``K`` would become a write problem that fails the try)."""
        with self._lock:
            try:
                self._control.settimeout(_ACK_TIMEOUT)
                send_message(self._control, message)
                while True:
                    answer = recv_message(self._control)
                    if answer is None or not self._unanswered:
                        return answer
                    self._unanswered -= 1  # the late answer to an earlier call
            except TimeoutError:
                self._unanswered += 1  # the pump is busy (a slow stdout): it answers later
                return None
            except OSError:
                return None  # the pump is gone: its log is already lost, the rescue says so

    def mask(self, secret: str) -> None:
        self._call(b"S" + secret.encode("utf-8", "surrogatepass"))

    def problem(self) -> str | None:
        """Once the pump has processed every byte written so far: its first write error."""
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        answer = self._call(b"Q")
        return answer.decode() if answer else None

    def finish(self, timeout: float) -> bool:
        """Close our ends of the pipe and wait (at most ``timeout``) for the pump to write
        and ship what is left; True if it ended in time."""
        if self._finished:
            return True
        self._finished = True
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        target = self._saved_stdout if self._saved_stdout is not None else devnull
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(devnull)
        with suppress(OSError):
            self._control.close()
        return _wait_child(self.pid, timeout)


def _wait_child(pid: int, timeout: float) -> bool:
    """Reap ``pid`` within ``timeout``; True if it ended (a pidfd wakes us at once)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        pidfd = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if done:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


_handle: PumpHandle | None = None


def current() -> PumpHandle | None:
    """This try's pump, if it has one."""
    return _handle


def pump_pid() -> int | None:
    """The pump's pid: the runner must not kill it with the task's own children."""
    return _handle.pid if _handle is not None else None


def start(live_file: str, config: PumpConfig) -> PumpHandle:
    """Fork the pump and make fds 1 and 2 its pipe; returns the try's handle.

    A live file that cannot be opened does not stop the try: the pump notes it as its
    problem (the runner then fails the try with that reason) and still echoes/ships.
    """
    global _handle
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    ours, theirs = socket.socketpair()
    saved_stdout = os.dup(1) if config.echo_stdout else None
    pid = os.fork()
    if pid == 0:  # the pump
        code = 0
        try:
            os.setsid()  # out of the try's process group: a killpg of the try spares it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it ends at the pipe's EOF
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.close(write_fd)
            ours.close()
            Pump(read_fd, theirs, live_file, config, saved_stdout).run()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(read_fd)
    theirs.close()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _handle = PumpHandle(pid, ours, saved_stdout, config)
    from ketch.worker import secrets_mask

    for value in secrets_mask.sensitive_values():
        _handle.mask(value)
    secrets_mask.add_listener(_forward_secret)
    return _handle


def _forward_secret(value: str) -> None:
    handle = _handle
    if handle is not None:
        handle.mask(value)
