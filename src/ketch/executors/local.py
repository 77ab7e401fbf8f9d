"""The local executor: every task try is a fresh process forked from a warm fork server.

The embedded default. Tries are forked by :mod:`ketch.executors.forkserver` (no
interpreter start-up per try), each in its own session so its whole process
group can be killed. Exits arrive as fork-server events and become ``TryEnded``
at once, so the scheduler reacts within milliseconds.

Tries outlive the scheduler: after a restart, :meth:`LocalExecutor.adopt` finds
them again by ``"pid:create_time"`` (the create time rules out a reused pid) and
watches them with a pidfd, since they are no longer our children and their exit
status cannot be learned. The execution API already holds their outcome.

A try gets a minimal environment, never the scheduler's (:func:`try_environment`): what
it needs to run and reach the execution API, the names or patterns listed in ``[core]
task_env_passthrough``, and never a ``KETCH_*`` setting or a value the scheduler holds
as a secret (database URL, Fernet key, signing keys): the try's ``os.environ`` is
replaced with it at fork. The fork server itself still starts with the scheduler's
environment (see the comment in :meth:`LocalExecutor.start`), so ``/proc/self/environ``
of a try and a DAG file preloaded in the server are not minimal yet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

import psutil
from pydantic import BaseModel, SecretStr

from ketch.authoring._defaults import PARSE_DEFAULTS_ENV, defaults_from_settings
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
from ketch.executors.forkserver import ChildExit, ForkServer, ForkServerError, Spawned
from ketch.logs.pump.config import CONFIG_ENV as PUMP_CONFIG_ENV
from ketch.logs.pump.config import PumpConfig
from ketch.worker.client import ENV_RETRY_TIMEOUT, ENV_TOKEN, ENV_URL
from ketch.worker.secrets_mask import looks_sensitive
from ketch.worker.task_log import log_path, make_private_dirs

log = logging.getLogger(__name__)

TIMEOUT_GRACE_SECONDS = 10.0  # the try enforces its own timeout; this is the backstop
KILL_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL this much later
_MONITOR_INTERVAL = 0.25
VANISHED = "process vanished while the scheduler was down"
# What a try records as its hostname at start (the runner calls socket.gethostname()).
_HOSTNAME = socket.gethostname()


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


# -- the try's environment ---------------------------------------------------------------

# What every try gets from the scheduler's environment when set: names, or patterns
# (fnmatch, case-sensitive). Everything else stays with the scheduler.
TRY_ENV_ALLOWED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    ENV_RETRY_TIMEOUT,
)
# Never passed, even when asked for: settings (the database URL, keys...), the remote
# CLI's API token, and where the configuration and generated keys are.
TRY_ENV_NEVER = ("KETCH__*", "KETCH_API_TOKEN", "KETCH_CONFIG", "KETCH_HOME")
# Keys ketch generates into $KETCH_HOME when they are not configured.
_SECRET_FILES = ("fernet_key", "jwt_secret", "session_secret")
# A secret shorter than this is not looked for inside other values (only equality).
_MIN_SECRET_LENGTH = 8
_GLOB_CHARS = frozenset("*?[")


def _secret_strings(value: object) -> Iterable[str]:
    """Every SecretStr value in a settings model, recursively."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_strings(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _secret_strings(item)


def scheduler_secrets(settings: Settings) -> set[str]:
    """The secret values this scheduler holds: every secret setting (each Fernet key of
    a list, the database URL and its password) and the keys generated into $KETCH_HOME."""
    found: set[str] = set()
    for secret in _secret_strings(settings):
        found.add(secret)
        found.update(part.strip() for part in secret.split(","))
        with contextlib.suppress(ValueError):
            password = urlsplit(secret).password
            if password:
                found.add(password)
    for name in _SECRET_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.add((settings.home / name).read_text().strip())
    return {s for s in found if s}


def _holds_secret(value: str, secrets: set[str]) -> bool:
    return any(
        value == secret or (len(secret) >= _MIN_SECRET_LENGTH and secret in value)
        for secret in secrets
    )


def task_env_passthrough(settings: Settings) -> list[str]:
    """``[core] task_env_passthrough``: more names (or fnmatch patterns) a try gets."""
    return [name.strip() for name in settings.core.task_env_passthrough if name.strip()]


def try_environment(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """The environment every try starts from (before its token and the API URL), and the
    names refused although ``[core] task_env_passthrough`` asked for them.

    A name is passed when it is in :data:`TRY_ENV_ALLOWED`, named exactly in the
    passthrough list, or matched by a passthrough pattern and not sensitive-looking
    (``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*``...: name those exactly). Never passed:
    :data:`TRY_ENV_NEVER` (``KETCH__*`` settings, the CLI's API token, the locations of
    the configuration and of the generated keys) and any variable whose value holds a
    secret of the scheduler's.
    """
    source = os.environ if environ is None else environ
    passthrough = task_env_passthrough(settings)
    exact = {p for p in passthrough if not _GLOB_CHARS & set(p)}
    patterns = [p for p in passthrough if _GLOB_CHARS & set(p)]
    secrets = scheduler_secrets(settings)
    env: dict[str, str] = {}
    refused: list[str] = []
    for name, value in source.items():
        builtin = any(fnmatchcase(name, allowed) for allowed in TRY_ENV_ALLOWED)
        asked = name in exact or (
            any(fnmatchcase(name, p) for p in patterns) and not looks_sensitive(name)
        )
        if not (builtin or asked):
            continue
        if any(fnmatchcase(name, never) for never in TRY_ENV_NEVER) or _holds_secret(
            value, secrets
        ):
            if asked:
                refused.append(name)
            continue
        env[name] = value
    # The DAG defaults the scheduler parsed with: the try needs neither the settings
    # module nor the configuration they came from.
    env[PARSE_DEFAULTS_ENV] = json.dumps(defaults_from_settings(settings))
    if not settings.logging.coalesce_print_bursts:
        env[PUMP_CONFIG_ENV] = PumpConfig(coalesce=False).to_env()
    return env, sorted(refused)


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


def _started_process(running: RunningTry) -> tuple[int, float] | None:
    """(pid, create_time) of the process that started ``running`` on this machine, from
    what it recorded at ``try/start``; None when it is elsewhere, gone or not that process.

    A process created after the try started cannot be it (the pid was reused).
    """
    if running.pid is None or running.hostname != _HOSTNAME:
        return None
    try:
        created = psutil.Process(running.pid).create_time()
    except psutil.Error:
        return None
    if running.started_at_epoch is not None and created > running.started_at_epoch + 0.05:
        return None
    return running.pid, created


def describe_exit(exit_code: int | None, sig: int | None) -> str | None:
    if sig is not None:
        return f"killed by signal {sig}"
    if exit_code:
        return f"exited with code {exit_code}"
    return None


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
        # The fork server itself keeps the scheduler's environment (each try's os.environ
        # is replaced by the allow-list at fork). Starting it with the allow-list made a
        # relaunched try run twice in about half the crash-safety runs at
        # adoption.after_relaunch, for a reason not found yet: see the issue 8 note.
        self._forkserver = ForkServer(self._on_child_exit, self._on_orphans, env=None)
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
            hostname=_HOSTNAME,
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
            parsed = _started_process(running) or parse_external_id(running.external_executor_id)
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
