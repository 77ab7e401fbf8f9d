"""A pre-warmed fork server: fresh processes per try without paying interpreter start-up.

Every task try is a fresh process (isolation, a clean crash boundary), but
starting Python and importing the worker costs far more than running a no-op
task. So the local executor starts this server once: a child Python process
that imports the worker modules and then, single-threaded, forks one grandchild
per spawn request. Forking a warm process takes about a millisecond.

Protocol (JSON lines over two pipes, fds given on the command line; the modules to
preload in ``$KETCH_FORKSERVER_PRELOAD``):

- requests: ``{"id", "argv", "env", "log_file", "target"}``;
- events: ``{"type": "ready"}`` once; ``{"type": "spawned", "id", "pid", "create_time"}``
  or ``{"type": "spawn_failed", "id", "error"}`` for each request, always before
  that child's ``{"type": "exit", "pid", "exit_code", "signal"}``.

The server has no threads (fork and threads do not mix), never opens a database
connection, reaps children from a SIGCHLD wake-up fd, and exits when its request
pipe reaches EOF (the executor died or stopped) without touching running children:
they are session leaders, keep running and keep reporting to the execution API.

The parent side, :class:`ForkServer`, runs a reader thread that turns events
into callbacks and restarts the server if it dies.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

DEFAULT_TARGET = "ketch.worker.runner:main"
PRELOAD_ENV = "KETCH_FORKSERVER_PRELOAD"
DEFAULT_PRELOAD = [
    "json",
    "http.client",
    "argparse",
    "traceback",
    "subprocess",
    "psutil",
    "ketch.exceptions",
    "ketch.states",
    "ketch.worker.client",
    "ketch.worker.task_log",
    "ketch.logs.pump",
    "ketch.logs.masking",
    "ketch.worker.runner",
    "ketch.authoring",
    "ketch.authoring.loader",
    "ketch.authoring.context",
    "ketch.authoring.tasks",
    "ketch",
    # A templated field imports jinja2 (~40 ms): once here rather than in every try.
    "jinja2.sandbox",
    "jinja2.nativetypes",
    "ketch.authoring.templating",
]


# ===================================================================================
# Server side: runs in the fork server process.
# ===================================================================================


def _write_event(fd: int, event: dict[str, Any]) -> None:
    data = (json.dumps(event) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _resolve_target(target: str) -> Callable[[list[str]], int]:
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def _redirect_output(log_file: str | None, argv: list[str]) -> None:
    """stdin from /dev/null; stdout and stderr to the try's log pump, which appends them
    (masked) to the try's log file.

    A log that cannot be written must neither kill the child before the try can say why
    nor raise into the task's own prints: the pump notes the first failure and the
    runner fails the try with it (``task_log``).
    """
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if not log_file:
        return
    from ketch.logs import pump
    from ketch.worker import task_log

    config = pump.PumpConfig.from_env(pump.meta_from_argv(argv))
    pump.start(log_file, config)
    task_log.guard_output(log_file, coalesce=config.coalesce)


def _finish_log() -> None:
    """Wait for the log pump to write what the try printed last (bounded)."""
    from ketch.logs import pump

    handle = pump.current()
    if handle is not None:
        handle.finish(timeout=pump.default_finish_timeout(handle.config))


def _child_main(request: dict[str, Any], server_fds: list[int]) -> None:
    """In the forked grandchild: become a fresh try and never return."""
    code = 1
    os.environ["KETCH_PROCESS_STARTED_AT"] = repr(time.time())  # the try's birth: this fork
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        # As in any Python process: a write to a socket the web server closed must raise
        # EPIPE (and be retried), not kill the try.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for fd in server_fds:
            os.close(fd)
        os.setsid()
        started_at = os.environ["KETCH_PROCESS_STARTED_AT"]
        os.environ.clear()
        os.environ.update(request.get("env") or {})
        os.environ["KETCH_PROCESS_STARTED_AT"] = started_at
        _redirect_output(request.get("log_file"), list(request["argv"]))
        import random

        random.seed()
        argv = list(request["argv"])
        sys.argv = [request.get("target", DEFAULT_TARGET), *argv]
        gc.enable()
        code = int(_resolve_target(request.get("target", DEFAULT_TARGET))(argv) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(BaseException):
            _finish_log()
        os._exit(code)


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
        _write_event(self.evt_fd, {"type": "ready", "pid": os.getpid()})
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
            _write_event(
                self.evt_fd, {"type": "spawn_failed", "id": request["id"], "error": str(exc)}
            )
            return
        if pid == 0:
            _child_main(request, [self.req_fd, self.evt_fd, self.wake_r, self.wake_w])
        event = {
            "type": "spawned",
            "id": request["id"],
            "pid": pid,
            "create_time": _create_time(pid),
        }
        _write_event(self.evt_fd, event)

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
            _write_event(self.evt_fd, event)


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


# ===================================================================================
# Parent side: used by the LocalExecutor (in the scheduler process).
# ===================================================================================


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


if __name__ == "__main__":
    sys.exit(server_main(sys.argv[1:]))
