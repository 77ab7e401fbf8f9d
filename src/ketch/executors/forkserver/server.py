"""The fork server's own process: preload the worker, then fork one child per request.

Single-threaded on purpose (fork and threads do not mix); see the package's docstring for
the protocol. Started by :class:`~ketch.executors.forkserver.client.ForkServer` as
``python -m ketch.executors.forkserver REQ_FD EVT_FD``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import sys
from typing import Any

from ketch.executors.forkserver.child import child_main
from ketch.executors.forkserver.protocol import PRELOAD_ENV, write_event


def _create_time(pid: int) -> float:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return 0.0


class _ImportTimeout(Exception):
    pass


def _import_timed_out(_signum: int, _frame: Any) -> None:
    raise _ImportTimeout("DAG file import timed out in the fork server")


MAX_PRELOADED_DAG_FILES = 64


class _Server:
    """The fork server's single-threaded loop."""

    def __init__(self, req_fd: int, evt_fd: int) -> None:
        self.failed_dag_files: set[tuple[str, tuple[int, int, int]]] = set()
        self.req_fd = req_fd
        self.evt_fd = evt_fd
        self.buffer = b""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def run(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        selector = selectors.DefaultSelector()
        selector.register(self.req_fd, selectors.EVENT_READ, "req")
        selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        write_event(self.evt_fd, {"type": "ready", "pid": os.getpid()})
        while True:
            for key, _ in selector.select(timeout=1.0):
                if key.data == "wake":
                    self._drain_wakeup()
                elif not self._read_requests():
                    return  # EOF: the executor is gone; leave the children running
            self._reap()

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _read_requests(self) -> bool:
        chunk = os.read(self.req_fd, 1 << 16)
        if not chunk:
            return False
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._spawn(json.loads(line))
        return True

    def _preload_dag_file(self, path: str, timeout: float) -> None:
        """Import the try's DAG file here, once per file version, before forking.

        A file that fails, hangs past the import timeout or exits is not retried
        in this version: its tries import it themselves and report the error.
        """
        from ketch.authoring import loader

        try:
            identity = loader._identity(path)
        except OSError:
            return
        if (path, identity) in self.failed_dag_files:
            return
        previous = signal.signal(signal.SIGALRM, _import_timed_out)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            loader.preload(path)
        except BaseException as exc:
            self.failed_dag_files.add((path, identity))
            print(
                f"ketch fork server: not preloading {path}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        while len(loader._preloaded) > MAX_PRELOADED_DAG_FILES:
            loader._preloaded.pop(next(iter(loader._preloaded)))

    def _spawn(self, request: dict[str, Any]) -> None:
        if request.get("dag_file"):
            self._preload_dag_file(
                str(request["dag_file"]), float(request.get("dag_timeout") or 30)
            )
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            write_event(
                self.evt_fd, {"type": "spawn_failed", "id": request["id"], "error": str(exc)}
            )
            return
        if pid == 0:
            child_main(request, [self.req_fd, self.evt_fd, self.wake_r, self.wake_w])
        event = {
            "type": "spawned",
            "id": request["id"],
            "pid": pid,
            "create_time": _create_time(pid),
        }
        write_event(self.evt_fd, event)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            event = {
                "type": "exit",
                "pid": pid,
                "exit_code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
            }
            write_event(self.evt_fd, event)


def _preload(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"ketch fork server: cannot preload {name}: {exc}", file=sys.stderr, flush=True)


def server_main(argv: list[str]) -> int:
    """``python -m ketch.executors.forkserver REQ_FD EVT_FD``; modules to preload in
    ``$KETCH_FORKSERVER_PRELOAD`` (not argv: forked tries inherit the command line)."""
    req_fd, evt_fd = int(argv[0]), int(argv[1])
    _preload([m for m in os.environ.pop(PRELOAD_ENV, "").split(",") if m])
    gc.collect()
    gc.freeze()  # keep the warm heap shared copy-on-write with every child
    # BrokenPipeError: the executor closed the event pipe, nothing is left to report to.
    with contextlib.suppress(BrokenPipeError):
        _Server(req_fd, evt_fd).run()
    return 0
