"""In a forked grandchild of the fork server: become a fresh try and never return.

Its own module because it runs in a third kind of process (neither the server's loop nor
the scheduler): it resets what the fork inherited (signals, the server's fds, the
environment), starts the try's log pump and runs the target.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from ketch.executors.forkserver.protocol import DEFAULT_TARGET


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


def child_main(request: dict[str, Any], server_fds: list[int]) -> None:
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
