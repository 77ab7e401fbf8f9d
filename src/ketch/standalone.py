"""The server processes: ``ketch standalone``, ``ketch scheduler``, ``ketch web``.

Threads and shutdown
--------------------
``standalone`` runs uvicorn on the main thread and the scheduler on a thread.
Our SIGINT/SIGTERM handlers own the signals (uvicorn's own capture is turned off):
they set the scheduler's stop event and tell uvicorn to exit, which stops accepting
requests, lets open ones finish, and returns; we then join the scheduler's thread,
which stops the DAG processor and the executor. Executors leave running tries
running (a try outlives its scheduler and is adopted on the next start), so
shutdown takes a few seconds whatever the tasks are doing. A second signal stops
waiting for open requests. If the scheduler thread dies, the web server is told to
exit too: a standalone process that silently stopped scheduling would look healthy
and do nothing.

``scheduler`` is the same without uvicorn: the scheduling loop runs on the main
thread until a signal sets the stop event. ``web`` is uvicorn alone.

Web servers and ports
---------------------
The web server serves the UI, the REST API and the execution API on ``[api] port``. With
``[api] execution_port`` set (and different), one process serves two uvicorn servers on
one event loop: the main port without the execution API, and the execution port with
only it (same bind address), so a NetworkPolicy can confine worker pods to the latter.
Our SIGINT/SIGTERM handlers stop both (with uvicorn's own capture, each server would
take the signal from the other).
Before binding, :func:`ketch.auth.exposure.check_exposure` refuses, in one line, to serve
a non-loopback address without sign-in. The settings the apps get carry the address and
port really bound (``ketch web --host/--port``): the auth layer decides the session
cookie's ``Secure`` flag from them.

One active scheduler (``ketch.scheduler.lease``)
-----------------------------------------------
``scheduler`` and ``standalone`` schedule only while they hold the scheduler lease
(:class:`SchedulerTerms`). On PostgreSQL a second process waits as a standby ("standby:
scheduler X is active; waiting") and takes over when the active one dies, is stopped,
paused or cut off. Only then does it build and run the scheduler stack (DAG processor,
executor, variable sync, loop); every commit of the loop is fenced by the lease. A leader
that loses the lease stops its stack — executors leave running tries running, the new
leader adopts them — and goes back to standby in the same process (its web server, in
``standalone``, keeps serving). On SIGTERM a leader stops its stack, then releases the
lease so a standby takes over at once. On SQLite a second scheduler exits at start with
a one-line error: SQLite supports one scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ketch.config import Settings
    from ketch.executors.base import Executor
    from ketch.logs.access import LogAccess

log = logging.getLogger("ketch.standalone")

SHUTDOWN_JOIN_SECONDS = 10.0


def bundled_dags_folder() -> Path:
    """The example DAGs shipped inside the package."""
    import ketch

    return Path(ketch.__file__).resolve().parent / "example_dags"


def effective_dags_folder(settings: Settings) -> Path:
    """``[core] dags_folder``, or the bundled examples when it is not set."""
    folder = settings.core.dags_folder
    if folder and not Path(folder).expanduser().is_dir():  # a typo would schedule nothing, silently
        log.warning(
            "[core] dags_folder %s: no such folder; no DAGs are found until it exists", folder
        )
    return Path(folder).expanduser().resolve() if folder else bundled_dags_folder()


def _with_dags_folder(settings: Settings) -> Settings:
    """Pin the effective DAGs folder in the environment, so every component and every
    child process (task tries read settings too) agrees on it."""
    from ketch.config import get_settings

    if settings.core.dags_folder is not None:
        return settings
    os.environ["KETCH__CORE__DAGS_FOLDER"] = str(bundled_dags_folder())
    get_settings.cache_clear()
    return get_settings()


def make_executor(settings: Settings) -> Executor:
    """The configured executor (``[core] executor``)."""
    if settings.core.executor == "kubernetes":
        try:
            from ketch.executors.kubernetes import KubernetesExecutor
        except ImportError as exc:
            raise RuntimeError(f"the kubernetes executor is not available: {exc}") from exc
        return KubernetesExecutor(settings)  # type: ignore[no-any-return,unused-ignore]
    from ketch.executors.local import LocalExecutor

    return LocalExecutor(settings)


def set_log_capture(settings: Settings, executor: Executor, logs: LogAccess) -> None:
    """With the Kubernetes executor: every finished pod's log is rescued into the archive
    (unless its try completed it itself) before the pod is deleted; a failure keeps the pod
    and is retried (``KubernetesExecutor.log_capture``). The archive is the scheduler's
    one (``logs``, shared with the log keeper), opened at the first capture: a failure
    there is retried too."""
    if settings.core.executor != "kubernetes":
        return
    from ketch.logs.pod_log import capture_pod_log

    def capture(pod: dict[str, Any], reason: str) -> None:
        kube = executor.api  # type: ignore[attr-defined]
        capture_pod_log(kube, logs.archive, pod, reason, settings.logging.json_format)

    executor.log_capture = capture  # type: ignore[attr-defined]


def make_log_keeper(settings: Settings, engine: Engine, logs: LogAccess) -> Any:
    """The scheduler's :class:`~ketch.logs.keeper.LogKeeper` over the configured archive."""
    from ketch.logs.keeper import LogKeeper

    return LogKeeper(settings, engine, logs.archive)


class SchedulerStack:
    """DAG processor + executor + scheduler, wired so a parsed change or a user action
    wakes the scheduling loop at once."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        from ketch import operations
        from ketch.dag_processing.processor import DagProcessor
        from ketch.logs.access import LogAccess
        from ketch.scheduler.loop import Scheduler
        from ketch.variables.sync import SyncService

        self.stop_event = threading.Event()
        self.executor = make_executor(settings)
        self.logs = LogAccess(settings)  # the archive, shared by log capture and keeper
        set_log_capture(settings, self.executor, self.logs)  # pods' logs, before deletion
        self.processor = DagProcessor(settings, engine, on_change=self._wake)
        self.scheduler = Scheduler(settings, engine, self.executor, dag_processor=self.processor)
        self.variable_sync = SyncService(settings, engine)  # [variables] sync_sources, a thread
        self.log_keeper = make_log_keeper(settings, engine, self.logs)  # ships, rescues, retention
        self._operations_hook = self.scheduler.wake
        operations.on_change.append(self._operations_hook)

    def _wake(self) -> None:
        self.scheduler.wake()

    def run(self) -> None:
        """Block in the scheduling loop until :meth:`stop` is called. The scheduler starts
        the executor and the DAG processor, and stops both when its loop ends."""
        self.variable_sync.start()
        self.log_keeper.start()
        try:
            self.scheduler.run(self.stop_event)
        finally:
            self.variable_sync.stop()
            self.log_keeper.stop()
            # Idempotent; covers a LeaseLost raised before the loop's own try/finally.
            self.processor.stop()
            self.executor.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.scheduler.wake()

    def close(self) -> None:
        """Unhook from user actions. The loop itself stopped the processor and executor on
        its way out (running tries keep running; they are adopted on restart)."""
        from ketch import operations

        if self._operations_hook in operations.on_change:
            operations.on_change.remove(self._operations_hook)


class SchedulerTerms:
    """Standby until this process holds the scheduler lease, then a :class:`SchedulerStack`
    until the lease is lost (back to standby, a new stack next term) or :meth:`stop` is
    called (stop the stack, then release the lease)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        from ketch.scheduler.lease.holder import tag_connections
        from ketch.scheduler.lease.scheduler_lease import SchedulerLease

        self.settings = settings
        self.engine = engine
        self.lease = SchedulerLease(engine, settings.scheduler)
        self.lease.prepare()  # SQLite: a second scheduler fails here, before serving anything
        tag_connections(engine, self.lease.holder, settings.scheduler)
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._stack: SchedulerStack | None = None

    def stop(self) -> None:
        self.stop_event.set()
        with self._lock:
            stack = self._stack
        if stack is not None:
            stack.stop()

    def run(self) -> None:
        """Block until :meth:`stop`; raises only if a scheduler stack fails for good."""
        from ketch.scheduler.lease.fence import LeaseLost

        _import_stack_modules(self.settings)  # now, not in the failover's critical path
        try:
            while not self.stop_event.is_set():
                if not self.lease.acquire(self.stop_event):
                    return
                stack = SchedulerStack(self.settings, self.engine)
                stack.scheduler.ctx.fence_with(self.lease.fence())
                self.lease.on_lost = lambda _reason, stack=stack: stack.stop()
                with self._lock:
                    self._stack = stack
                if self.stop_event.is_set():
                    stack.stop()
                try:
                    stack.run()
                except LeaseLost:
                    pass  # the lease logged why; the stack stopped on its way out
                finally:
                    with self._lock:
                        self._stack = None
                    stack.close()
                if self.lease.held:
                    return  # stopped on request: release below
                log.warning("scheduler stopped after losing the lease; back to standby")
        finally:
            self.lease.release()


def _import_stack_modules(settings: Settings) -> None:
    """Import what a scheduler stack needs while standing by (a few hundred ms, more with
    the Kubernetes client), so a takeover does not pay for it. Nothing is started."""
    import ketch.dag_processing.processor
    import ketch.scheduler.loop
    import ketch.variables.sync

    if settings.core.executor == "kubernetes":
        with contextlib.suppress(ImportError):  # make_executor reports it, with the reason
            import ketch.executors.kubernetes
    else:
        import ketch.executors.local  # noqa: F401


def _install_stop_handlers(on_signal: Callable[[], None]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        on_signal()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def safe_database_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def bound_settings(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``settings`` with ``[api] host`` and ``port`` as the server really binds them
    (``ketch web --host/--port`` override the configured ones)."""
    changes: dict[str, Any] = {}
    if host is not None and host != settings.api.host:
        changes["host"] = host
    if port is not None and port != settings.api.port:
        changes["port"] = port
    if not changes:
        return settings
    return settings.model_copy(update={"api": settings.api.model_copy(update=changes)})


def check_exposure(settings: Settings) -> None:
    """Refuse, in one line, to serve a non-loopback address without sign-in (before any
    port is bound); log how requests are authenticated otherwise."""
    from ketch.auth.exposure import UnsafeExposure
    from ketch.auth.exposure import check_exposure as check

    try:
        check(settings, settings.api.host)
    except UnsafeExposure as exc:
        raise SystemExit(f"ketch: {exc}") from None


def separate_execution_port(settings: Settings) -> int | None:
    """The execution API's own port, or None when the main port serves it too."""
    port = settings.api.execution_port
    return port if port is not None and port != settings.api.port else None


class WebServers:
    """The uvicorn server(s) of the web process: the main port, and the execution port
    when it is separate. Signals are ours (uvicorn's capture is off): our handlers call
    :meth:`on_signal`, which stops every server."""

    def __init__(self, settings: Settings) -> None:
        from ketch.api.app import create_app

        execution_port = separate_execution_port(settings)
        self.main = _uvicorn_server(
            create_app(settings, include_execution=execution_port is None),
            settings.api.host,
            settings.api.port,
        )
        self.servers = [self.main]
        self.execution: Any = None
        if execution_port is not None:
            from ketch.api.execution_app import create_execution_app

            self.execution = _uvicorn_server(
                create_execution_app(settings), settings.api.host, execution_port
            )
            self.servers.append(self.execution)

    def describe(self) -> str:
        """Where it serves, for the start-up log line."""
        main = f"http://{self.main.config.host}:{self.main.config.port}"
        if self.execution is None:
            return main
        return f"{main}, execution API on port {self.execution.config.port}"

    def stop(self) -> None:
        """Stop serving: no new requests, open ones may finish (5 s at most)."""
        for server in self.servers:
            server.should_exit = True

    def on_signal(self) -> None:
        """SIGINT/SIGTERM: stop; a second signal stops waiting for open requests."""
        for server in self.servers:
            if server.should_exit:
                server.force_exit = True
        self.stop()

    def run(self) -> None:
        """Serve until every server stopped; one stopping (a signal, a failed bind) stops
        the others. A server that could not start (uvicorn logged why and exits) makes
        the process exit with uvicorn's code once the others have shut down."""
        import asyncio

        failures: list[SystemExit] = []

        async def serve(server: Any) -> None:
            try:
                await server.serve()
            except SystemExit as exc:  # uvicorn's startup failure (a port in use)
                failures.append(exc)
            finally:
                self.stop()

        async def serve_all() -> None:
            await asyncio.gather(*(serve(server) for server in self.servers))

        with asyncio.Runner(loop_factory=self.main.config.get_loop_factory()) as runner:
            runner.run(serve_all())
        if failures:
            raise failures[0]


def _uvicorn_server(app: Any, host: str, port: int) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield  # our handlers stop every server of the process (WebServers.stop)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our logging_setup format, not uvicorn's
        timeout_graceful_shutdown=5,
        # uvicorn would believe X-Forwarded-For/Proto from 127.0.0.1 and rewrite the client
        # address the loopback-admin check reads; ketch believes forwarded headers only
        # from [auth] trusted_proxies, and only to build the sign-in redirect URI.
        proxy_headers=False,
    )
    return Server(config)


def _scheduler_terms(settings: Settings, engine: Engine) -> SchedulerTerms:
    """The process's lease and stacks; a second scheduler on SQLite exits here, one line."""
    from ketch.scheduler.lease.sqlite_lock import AnotherScheduler

    try:
        return SchedulerTerms(settings, engine)
    except AnotherScheduler as exc:
        raise SystemExit(f"ketch: {exc}") from None


def run_standalone(settings: Settings, engine: Engine) -> None:
    """Scheduler (thread) + web server (main thread) until SIGINT/SIGTERM."""
    from ketch.logging_setup import configure_logging

    settings = _with_dags_folder(settings)
    configure_logging(settings)
    check_exposure(settings)
    terms = _scheduler_terms(settings, engine)
    web = WebServers(settings)

    def stop_all() -> None:
        terms.stop()
        web.on_signal()

    def scheduler_main() -> None:
        try:
            terms.run()
        except BaseException:
            log.exception("the scheduler stopped with an error; shutting down")
        finally:
            web.stop()

    _install_stop_handlers(stop_all)
    thread = threading.Thread(target=scheduler_main, name="ketch-scheduler", daemon=True)
    thread.start()
    log.info(
        "ketch standalone: web on %s, DAGs from %s, database %s",
        web.describe(),
        effective_dags_folder(settings),
        safe_database_url(engine),
    )
    try:
        web.run()
    finally:
        terms.stop()
        thread.join(SHUTDOWN_JOIN_SECONDS)
        log.info("ketch standalone stopped")


def run_scheduler(settings: Settings, engine: Engine) -> None:
    """The scheduler on the main thread until SIGINT/SIGTERM."""
    from ketch.logging_setup import configure_logging

    settings = _with_dags_folder(settings)
    configure_logging(settings)
    terms = _scheduler_terms(settings, engine)
    _install_stop_handlers(terms.stop)
    log.info(
        "ketch scheduler %s: DAGs from %s, database %s",
        terms.lease.holder,
        effective_dags_folder(settings),
        safe_database_url(engine),
    )
    try:
        terms.run()
    finally:
        log.info("ketch scheduler stopped")


def run_web(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """The web server alone (REST API + execution API, on one port or two) until
    SIGINT/SIGTERM. ``host``/``port`` override ``[api] host``/``port``."""
    from ketch.logging_setup import configure_logging

    settings = bound_settings(settings, host, port)
    configure_logging(settings)
    check_exposure(settings)
    web = WebServers(settings)
    _install_stop_handlers(web.on_signal)
    log.info("ketch web: %s", web.describe())
    web.run()
