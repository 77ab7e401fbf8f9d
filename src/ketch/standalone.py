"""The server processes: ``ketch standalone``, ``ketch scheduler``, ``ketch web``.

Threads and shutdown
--------------------
``standalone`` runs uvicorn on the main thread and the scheduler on a thread.
Uvicorn owns SIGINT/SIGTERM while it serves: it stops accepting requests, lets
open ones finish, and returns; we then set the scheduler's stop event, join its
thread, and stop the DAG processor and the executor. Executors leave running
tries running (a try outlives its scheduler and is adopted on the next start),
so shutdown takes a few seconds whatever the tasks are doing. Our own handlers
are installed before uvicorn's so a signal uvicorn re-raises after its shutdown
lands in them (set the stop event) instead of killing the process mid-cleanup.
If the scheduler thread dies, the web server is told to exit too: a standalone
process that silently stopped scheduling would look healthy and do nothing.

``scheduler`` is the same without uvicorn: the scheduling loop runs on the main
thread until a signal sets the stop event. ``web`` is uvicorn alone.
"""

from __future__ import annotations

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

log = logging.getLogger("ketch.standalone")

SHUTDOWN_JOIN_SECONDS = 10.0


def bundled_dags_folder() -> Path:
    """The example DAGs shipped inside the package."""
    import ketch

    return Path(ketch.__file__).resolve().parent / "example_dags"


def effective_dags_folder(settings: Settings) -> Path:
    """``[core] dags_folder``, or the bundled examples when it is not set."""
    folder = settings.core.dags_folder
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


class SchedulerStack:
    """DAG processor + executor + scheduler, wired so a parsed change or a user action
    wakes the scheduling loop at once."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        from ketch import operations
        from ketch.dag_processing.processor import DagProcessor
        from ketch.scheduler.loop import Scheduler
        from ketch.variables.sync import SyncService

        self.stop_event = threading.Event()
        self.executor = make_executor(settings)
        self.processor = DagProcessor(settings, engine, on_change=self._wake)
        self.scheduler = Scheduler(settings, engine, self.executor, dag_processor=self.processor)
        self.variable_sync = SyncService(settings, engine)  # [variables] sync_sources, a thread
        self._operations_hook = self.scheduler.wake
        operations.on_change.append(self._operations_hook)

    def _wake(self) -> None:
        self.scheduler.wake()

    def run(self) -> None:
        """Block in the scheduling loop until :meth:`stop` is called. The scheduler starts
        the executor and the DAG processor, and stops both when its loop ends."""
        self.variable_sync.start()
        try:
            self.scheduler.run(self.stop_event)
        finally:
            self.variable_sync.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.scheduler.wake()

    def close(self) -> None:
        """Unhook from user actions. The loop itself stopped the processor and executor on
        its way out (running tries keep running; they are adopted on restart)."""
        from ketch import operations

        if self._operations_hook in operations.on_change:
            operations.on_change.remove(self._operations_hook)


def _install_stop_handlers(on_signal: Callable[[], None]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        on_signal()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def safe_database_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _uvicorn_server(settings: Settings, host: str | None, port: int | None) -> Any:
    import uvicorn

    from ketch.api.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=host or settings.api.host,
        port=settings.api.port if port is None else port,
        log_config=None,  # our logging_setup format, not uvicorn's
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def run_standalone(settings: Settings, engine: Engine) -> None:
    """Scheduler (thread) + web server (main thread) until SIGINT/SIGTERM."""
    from ketch.logging_setup import configure_logging

    settings = _with_dags_folder(settings)
    configure_logging(settings)
    stack = SchedulerStack(settings, engine)
    server = _uvicorn_server(settings, None, None)

    def stop_all() -> None:
        stack.stop()
        server.should_exit = True

    def scheduler_main() -> None:
        try:
            stack.run()
        except BaseException:
            log.exception("the scheduler stopped with an error; shutting down")
        finally:
            server.should_exit = True

    _install_stop_handlers(stop_all)
    thread = threading.Thread(target=scheduler_main, name="ketch-scheduler", daemon=True)
    thread.start()
    log.info(
        "ketch standalone: web on http://%s:%s, DAGs from %s, database %s",
        server.config.host,
        server.config.port,
        effective_dags_folder(settings),
        safe_database_url(engine),
    )
    try:
        server.run()
    finally:
        stack.stop()
        thread.join(SHUTDOWN_JOIN_SECONDS)
        stack.close()
        log.info("ketch standalone stopped")


def run_scheduler(settings: Settings, engine: Engine) -> None:
    """The scheduler on the main thread until SIGINT/SIGTERM."""
    from ketch.logging_setup import configure_logging

    settings = _with_dags_folder(settings)
    configure_logging(settings)
    stack = SchedulerStack(settings, engine)
    _install_stop_handlers(stack.stop)
    log.info(
        "ketch scheduler: DAGs from %s, database %s",
        effective_dags_folder(settings),
        safe_database_url(engine),
    )
    try:
        stack.run()
    finally:
        stack.close()
        log.info("ketch scheduler stopped")


def run_web(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """The web server alone (REST API + execution API) until SIGINT/SIGTERM."""
    from ketch.logging_setup import configure_logging

    configure_logging(settings)
    server = _uvicorn_server(settings, host, port)
    _install_stop_handlers(lambda: setattr(server, "should_exit", True))
    log.info("ketch web: http://%s:%s", server.config.host, server.config.port)
    server.run()
