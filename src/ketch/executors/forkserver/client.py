"""The parent side of the fork server, used by the local executor (in the scheduler).

Starts the server process, sends it spawn requests (many in flight at once), and turns its
events into futures and exit callbacks on a reader thread; restarts a server that died and
hands its children still in flight to the caller as orphans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ketch.executors.forkserver.protocol import DEFAULT_PRELOAD, DEFAULT_TARGET, PRELOAD_ENV


@dataclass(frozen=True, slots=True)
class ChildExit:
    """A forked child ended; exactly one of exit_code / signal is set."""

    pid: int
    tag: Any
    exit_code: int | None
    signal: int | None


@dataclass(frozen=True, slots=True)
class Spawned:
    pid: int
    create_time: float


class ForkServerError(RuntimeError):
    """The fork server could not start or could not fork."""


ExitCallback = Callable[[ChildExit], None]
OrphansCallback = Callable[[dict[int, Any]], None]


class ForkServer:
    """Parent-side handle: spawn children through the server, hear about their exits.

    ``on_exit`` is called from the reader thread. If the server process dies,
    it is restarted and its children still in flight (alive or not) are handed
    to ``on_orphans`` as ``{pid: tag}``: they are no longer our children, so the
    caller watches them some other way (pidfd).

    ``env`` is the server process's own environment (default: this process's). Give a
    minimal one when this process holds secrets: a forked child replaces ``os.environ``
    with its request's ``env``, but ``/proc/self/environ`` still shows the server's
    initial environment, and DAG files are preloaded (imported) in the server.
    """

    def __init__(
        self,
        on_exit: ExitCallback,
        on_orphans: OrphansCallback | None = None,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._on_exit = on_exit
        self._on_orphans = on_orphans
        self._python = python or sys.executable
        self._env = None if env is None else dict(env)
        self._preload: list[str] = []
        self._lock = threading.Lock()  # guards the fields below
        self._write_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._req_w: int | None = None
        self._pending: dict[int, tuple[Future[Spawned], Any]] = {}
        self._tags: dict[int, Any] = {}  # pid -> tag of children in flight
        self._next_id = 0
        self._stopping = False

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def start(self, preload: list[str] | None = None) -> None:
        """Start the server process and wait until its modules are imported."""
        self._preload = list(DEFAULT_PRELOAD if preload is None else preload)
        self._stopping = False
        self._launch()

    def _launch(self) -> None:
        req_r, req_w = os.pipe()
        evt_r, evt_w = os.pipe()
        cmd = [self._python, "-m", "ketch.executors.forkserver", str(req_r), str(evt_w)]
        base = os.environ if self._env is None else self._env
        env = {**base, PRELOAD_ENV: ",".join(self._preload)}
        try:
            proc = subprocess.Popen(
                cmd,
                pass_fds=(req_r, evt_w),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        finally:
            os.close(req_r)
            os.close(evt_w)
        events = os.fdopen(evt_r, "rb")
        ready = events.readline()
        if not ready:
            os.close(req_w)
            events.close()
            proc.wait()
            raise ForkServerError(f"fork server exited during start-up (code {proc.returncode})")
        with self._lock:
            self._proc, self._req_w = proc, req_w
        threading.Thread(
            target=self._read_events, args=(events, proc), name="ketch-forkserver", daemon=True
        ).start()

    def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log_file: str | None,
        tag: Any = None,
        target: str = DEFAULT_TARGET,
        timeout: float = 30.0,
        dag_file: str | None = None,
    ) -> Spawned:
        """Fork a child running ``target(argv)``; return its pid once it exists."""
        return self.submit(
            argv, env=env, log_file=log_file, tag=tag, target=target, dag_file=dag_file
        ).result(timeout=timeout)

    def submit(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log_file: str | None,
        tag: Any = None,
        target: str = DEFAULT_TARGET,
        dag_file: str | None = None,
        dag_timeout: float = 30.0,
    ) -> Future[Spawned]:
        """Ask for a fork without waiting: many requests in flight fork back to back,
        instead of one round trip (and one wake-up of each side) per child."""
        future: Future[Spawned] = Future()
        with self._lock:
            if self._req_w is None:
                raise ForkServerError("fork server is not running")
            request_id = self._next_id
            self._next_id += 1
            self._pending[request_id] = (future, tag)
            req_w = self._req_w
        request = {
            "id": request_id,
            "argv": argv,
            "env": env,
            "log_file": log_file,
            "target": target,
            "dag_file": dag_file,
            "dag_timeout": dag_timeout,
        }
        data = memoryview((json.dumps(request) + "\n").encode())
        try:
            with self._write_lock:
                while data:
                    data = data[os.write(req_w, data) :]
        except OSError as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            raise ForkServerError(f"fork server is gone: {exc}") from exc
        return future

    def _read_events(self, events: Any, proc: subprocess.Popen[bytes]) -> None:
        with events:
            for line in events:
                self._handle(json.loads(line))
        proc.wait()
        self._server_died(proc)

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "spawned":
            with self._lock:
                future, tag = self._pending.pop(event["id"])
                self._tags[event["pid"]] = tag
            future.set_result(Spawned(event["pid"], float(event.get("create_time") or 0.0)))
        elif kind == "spawn_failed":
            with self._lock:
                future, _tag = self._pending.pop(event["id"])
            future.set_exception(ForkServerError(f"fork failed: {event['error']}"))
        elif kind == "exit":
            with self._lock:
                tag = self._tags.pop(event["pid"], None)
            self._on_exit(ChildExit(event["pid"], tag, event["exit_code"], event["signal"]))

    def _server_died(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._proc is not proc:
                return
            orphans, self._tags = self._tags, {}
            pending, self._pending = self._pending, {}
            if self._req_w is not None:
                os.close(self._req_w)
            self._proc, self._req_w = None, None
            stopping = self._stopping
        for future, _tag in pending.values():
            future.set_exception(ForkServerError("fork server died"))
        if stopping:
            return  # stop() leaves children running, unwatched, for a later adopt()
        print(
            f"ketch: fork server exited unexpectedly (code {proc.returncode}); restarting",
            file=sys.stderr,
            flush=True,
        )
        try:
            self._launch()
        except (OSError, ForkServerError) as exc:
            print(f"ketch: fork server restart failed: {exc}", file=sys.stderr, flush=True)
        if orphans and self._on_orphans is not None:
            self._on_orphans(orphans)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the request pipe; the server exits and leaves its children running."""
        with self._lock:
            self._stopping = True
            proc, req_w = self._proc, self._req_w
            self._req_w = None
        if req_w is not None:
            os.close(req_w)
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
