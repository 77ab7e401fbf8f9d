"""The local executor: every task try is a fresh process forked from a warm fork server.

The embedded default. Tries are forked by :mod:`ketch.executors.forkserver` (no
interpreter start-up per try), each in its own session so its whole process
group can be killed. Exits arrive as fork-server events and become ``TryEnded``
at once, so the scheduler reacts within milliseconds.

Tries outlive the scheduler: after a restart, :meth:`LocalExecutor.adopt` finds
them again by ``"pid:create_time"`` (the create time rules out a reused pid) and
watches them with a pidfd, since they are no longer our children and their exit
status cannot be learned. The execution API already holds their outcome.

A try gets a minimal environment, never the scheduler's (see ``try_environment``): the
try's ``os.environ`` is replaced with it at fork, and the fork server itself starts with
it, since a forked try inherits the server's start-up environment (its
``/proc/self/environ``) and DAG files preloaded in the server are imported there.
Processes that are no longer our children are named and watched by ``process_watch``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import psutil

from ketch.config import Settings
from ketch.executors.base import (
    EventSink,
    LaunchError,
    LaunchRequest,
    RunningTry,
    TryEnded,
    TryKey,
    map_index_args,
)
from ketch.executors.forkserver.client import ChildExit, ForkServer, ForkServerError, Spawned
from ketch.executors.process_watch import (
    HOSTNAME,
    PidfdWatcher,
    open_pidfd,
    parse_external_id,
    started_process,
)
from ketch.executors.try_environment import try_environment
from ketch.worker.client import ENV_TOKEN, ENV_URL
from ketch.worker.task_log import log_path, make_private_dirs

log = logging.getLogger(__name__)

TIMEOUT_GRACE_SECONDS = 10.0  # the try enforces its own timeout; this is the backstop
KILL_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL this much later
_MONITOR_INTERVAL = 0.25
VANISHED = "process vanished while the scheduler was down"


@dataclass(eq=False)
class _Tracked:
    """A try this executor watches. Compared by identity: a relaunch is a new object."""

    key: TryKey
    ti_id: int
    timeout: float | None = None
    pid: int | None = None
    create_time: float = 0.0
    deadline: float | None = None  # monotonic time the timeout backstop fires
    kill_reason: str | None = None
    sigkill_at: float | None = None  # monotonic time to escalate to SIGKILL


def describe_exit(exit_code: int | None, sig: int | None) -> str | None:
    if sig is not None:
        return f"killed by signal {sig}"
    if exit_code:
        return f"exited with code {exit_code}"
    return None


class LocalExecutor:
    """:class:`ketch.executors.base.Executor` running tries as processes on this machine."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sink: EventSink | None = None
        self._lock = threading.Lock()
        self._tries: dict[TryKey, _Tracked] = {}
        self._forkserver: ForkServer | None = None
        self._watcher: PidfdWatcher | None = None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._env: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------

    def start(self, on_try_ended: EventSink) -> None:
        self._sink = on_try_ended
        self._stop.clear()
        self._env, refused = try_environment(self.settings)
        if refused:
            log.warning(
                "[core] task_env_passthrough: not passing %s to tries (a ketch setting or "
                "credential, or the value holds a secret of the scheduler's)",
                ", ".join(refused),
            )
        try:
            make_private_dirs(self.settings.log_folder)
        except OSError as exc:  # each try notes its own log problem
            log.warning("cannot create the log folder %s: %s", self.settings.log_folder, exc)
        self._watcher = PidfdWatcher()
        self._watcher.start()
        # The fork server starts with the tries' environment too: a forked try's
        # /proc/self/environ is the server's start-up environment. (This once seemed to
        # make a relaunched try run twice after a crash; that was adoption writing a stale
        # copy of a started try back to queued, fixed in scheduler/adoption.py.)
        self._forkserver = ForkServer(self._on_child_exit, self._on_orphans, env=self._env)
        self._forkserver.start()
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="ketch-local-executor", daemon=True
        )
        self._monitor.start()

    def stop(self) -> None:
        """Stop watching; running tries keep running and are adopted by the next executor."""
        self._stop.set()
        if self._forkserver is not None:
            self._forkserver.stop()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        if self._watcher is not None:
            self._watcher.stop()
        with self._lock:
            self._tries.clear()
        self._forkserver = self._watcher = self._monitor = None

    def running(self) -> set[TryKey]:
        with self._lock:
            return set(self._tries)

    # -- launch ----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        tracked, future = self._submit(request)
        return self._resolve(tracked, future)

    def launch_many(self, requests: Sequence[LaunchRequest]) -> list[str | LaunchError]:
        """Fork a batch of tries with every request in flight at once (see ForkServer.submit)."""
        submitted: list[tuple[_Tracked, Future[Spawned]] | LaunchError] = []
        for request in requests:
            try:
                submitted.append(self._submit(request))
            except LaunchError as exc:
                submitted.append(exc)
        results: list[str | LaunchError] = []
        for item in submitted:
            if isinstance(item, LaunchError):
                results.append(item)
                continue
            try:
                results.append(self._resolve(*item))
            except LaunchError as exc:
                results.append(exc)
        return results

    def _submit(self, request: LaunchRequest) -> tuple[_Tracked, Future[Spawned]]:
        if self._forkserver is None:
            raise LaunchError("the local executor is not started")
        tracked = _Tracked(request.key, request.ti_id, timeout=request.execution_timeout)
        if request.execution_timeout:
            tracked.deadline = time.monotonic() + request.execution_timeout + TIMEOUT_GRACE_SECONDS
        with self._lock:
            self._tries[request.key] = tracked
        key = request.key
        try:
            log_file = str(log_path(self.settings.log_folder, key))
        except ValueError as exc:  # ids that cannot name a file inside the log folder
            self._forget(tracked)
            raise LaunchError(f"no log file for the try: {exc}") from exc
        argv = [key.dag_id, key.task_id, key.run_id, "--try", str(key.try_number)]
        argv += map_index_args(key)
        env = {
            **self._env,
            ENV_TOKEN: request.token,
            ENV_URL: self.settings.execution_api_url,
        }
        try:
            future = self._forkserver.submit(
                argv,
                env=env,
                log_file=log_file,
                tag=tracked,
                dag_file=request.fileloc,
                dag_timeout=self.settings.core.dagbag_import_timeout,
            )
        except ForkServerError as exc:
            self._forget(tracked)
            raise LaunchError(f"could not fork the try: {exc}") from exc
        return tracked, future

    def _resolve(self, tracked: _Tracked, future: Future[Spawned]) -> str:
        try:
            spawned = future.result(timeout=30.0)
        except (ForkServerError, TimeoutError) as exc:
            self._forget(tracked)
            raise LaunchError(f"could not fork the try: {exc}") from exc
        tracked.pid, tracked.create_time = spawned.pid, spawned.create_time
        return f"{spawned.pid}:{spawned.create_time}"

    # -- exits -----------------------------------------------------------------------

    def _forget(self, tracked: _Tracked) -> bool:
        """Stop tracking ``tracked``; False if it was no longer (or never) tracked."""
        with self._lock:
            if self._tries.get(tracked.key) is not tracked:
                return False
            del self._tries[tracked.key]
            return True

    def _ended(self, tracked: _Tracked, exit_code: int | None, reason: str | None) -> None:
        if not self._forget(tracked):
            return
        event = TryEnded(
            tracked.key,
            tracked.ti_id,
            exit_code,
            tracked.kill_reason or reason,
            hostname=HOSTNAME,
            pid=tracked.pid,
        )
        if self._sink is None:
            return
        try:
            self._sink(event)
        except Exception:
            log.exception("event sink failed for %s", event)

    def _on_child_exit(self, child: ChildExit) -> None:
        if not isinstance(child.tag, _Tracked):
            return
        code = -child.signal if child.signal is not None else child.exit_code
        self._ended(child.tag, code, describe_exit(child.exit_code, child.signal))

    def _on_orphans(self, orphans: dict[int, object]) -> None:
        """The fork server died: keep watching its children that still run."""
        for tracked in orphans.values():
            if isinstance(tracked, _Tracked) and tracked.pid is not None:
                self._watch_or_end(tracked, "exit status unknown: the fork server died")

    def _watch_or_end(self, tracked: _Tracked, gone_reason: str) -> bool:
        """Watch a process that is not our child; report it ended now if it is gone."""
        assert tracked.pid is not None and self._watcher is not None
        fd = open_pidfd(tracked.pid, tracked.create_time)
        if fd is None:
            self._ended(tracked, None, gone_reason)
            return False
        self._watcher.watch(fd, lambda: self._ended(tracked, None, None))
        return True

    # -- adoption --------------------------------------------------------------------

    def adopt(self, tries: Iterable[RunningTry]) -> list[TryKey]:
        """Watch tries a previous scheduler started, found by their external id or, when
        the launch was never recorded, by the pid the try recorded at start on this host.
        A queued try with no external id was never launched (or not yet started): it is
        neither adopted nor reported, and the scheduler relaunches it."""
        adopted: list[TryKey] = []
        for running in tries:
            parsed = started_process(running) or parse_external_id(running.external_executor_id)
            if parsed is None:
                continue
            tracked = _Tracked(running.key, running.ti_id, timeout=running.execution_timeout)
            tracked.pid, tracked.create_time = parsed
            if running.execution_timeout:
                started = running.started_at_epoch or tracked.create_time
                remaining = (
                    started + running.execution_timeout + TIMEOUT_GRACE_SECONDS - time.time()
                )
                tracked.deadline = time.monotonic() + remaining
            with self._lock:
                self._tries[running.key] = tracked
            if self._watch_or_end(tracked, VANISHED):
                adopted.append(running.key)
        return adopted

    # -- killing ---------------------------------------------------------------------

    def cancel(self, key: TryKey) -> None:
        with self._lock:
            tracked = self._tries.get(key)
        if tracked is not None and tracked.kill_reason is None:
            self._kill(tracked, "cancelled; process group killed")

    def _kill(self, tracked: _Tracked, reason: str) -> None:
        tracked.kill_reason = reason
        tracked.sigkill_at = time.monotonic() + KILL_GRACE_SECONDS
        self._signal_group(tracked, signal.SIGTERM)

    def _signal_group(self, tracked: _Tracked, sig: int) -> None:
        pid = tracked.pid
        if pid is None:
            return
        try:
            alive = psutil.Process(pid)
            if abs(alive.create_time() - tracked.create_time) >= 0.05:
                return  # the pid now belongs to someone else
        except psutil.Error:
            pass  # the leader is gone; members of its group may remain
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _monitor_loop(self) -> None:
        """Timeout backstop and SIGKILL escalation, a few times a second."""
        while not self._stop.wait(_MONITOR_INTERVAL):
            now = time.monotonic()
            with self._lock:
                tracked_list = list(self._tries.values())
            for tracked in tracked_list:
                if (
                    tracked.deadline is not None
                    and now >= tracked.deadline
                    and not tracked.kill_reason
                ):
                    reason = (
                        f"execution_timeout of {tracked.timeout:g}s exceeded; process group killed"
                    )
                    self._kill(tracked, reason)
                elif tracked.sigkill_at is not None and now >= tracked.sigkill_at:
                    tracked.sigkill_at = None
                    self._signal_group(tracked, signal.SIGKILL)
