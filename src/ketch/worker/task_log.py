"""Where a try's log lives and what happens when the log cannot be written.

One path rule for everyone: the try's log pump (``ketch.logs.pump``) writes the file,
the REST API and the log archive read it. The pump reads fds 1 and 2, not
``sys.stdout``, so output of C extensions and of child processes (a bash task) is
captured too.

A log that cannot be written (a full disk, a read-only or missing volume) must not
crash the try with an unrelated error, kill it silently, or hang it: the first failure
is remembered (:func:`note_write_error`), output goes on where it still can, and the
runner fails the try with :func:`write_problem` as its error, e.g. ``cannot write the
task log: [Errno 28] No space left on device (/logs/.../attempt=1.log)``.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.executors.base import TryKey
from ketch.worker.stdout_pacing import WAKE_EVERY

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class UnsafeLogPath(ValueError):
    """A dag_id, run_id or task_id that would put a try's log outside its own folder
    (a path separator, a NUL, or a path that resolves outside the log folder)."""


_UNSAFE_IN_NAME = ("/", "\\", "\0")


def log_path(settings_log_folder: Path, key: TryKey) -> Path:
    """``{log_folder}/dag_id=D/run_id=R/task_id=T/attempt=N.log`` (Airflow's layout),
    with ``map_index=M/`` before ``attempt=`` for a mapped instance.

    Raises :class:`UnsafeLogPath` rather than name a file anywhere else: each id must
    be one path segment, and the try's folder must resolve inside the resolved log
    folder (run ids come from users; ``../../x`` must not write or read outside it).
    The file itself may be a symlink (readers check where it points before reading).
    """
    parts = {"dag_id": key.dag_id, "run_id": key.run_id, "task_id": key.task_id}
    for name, value in parts.items():
        if any(c in value for c in _UNSAFE_IN_NAME):
            raise UnsafeLogPath(
                f"{name} {value!r} cannot name a log file: it contains '/', '\\' or NUL"
            )
    if isinstance(key.try_number, bool) or not isinstance(key.try_number, int):
        raise UnsafeLogPath(f"try number {key.try_number!r} is not a whole number")
    folder = Path(settings_log_folder)
    task_folder = (
        folder / f"dag_id={key.dag_id}" / f"run_id={key.run_id}" / f"task_id={key.task_id}"
    )
    map_index = getattr(key, "map_index", -1)
    if map_index >= 0:  # a mapped instance: Airflow's map_index= level
        task_folder = task_folder / f"map_index={int(map_index)}"
    path = task_folder / f"attempt={key.try_number}.log"
    base = folder.resolve()
    if not path.parent.resolve().is_relative_to(base):
        raise UnsafeLogPath(f"the log of {key} would lie outside the log folder {base}")
    return path


# -- owner-only folders and files --------------------------------------------------------

LOG_FILE_MODE = 0o600  # a try's output may hold what it printed of its secrets
LOG_DIR_MODE = 0o700


def make_private_dirs(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` and its missing parents owner-only (0700); existing ones are left
    as they are. (``os.makedirs`` gives its ``mode`` to the last folder only.)"""
    path = Path(folder)
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(directory, LOG_DIR_MODE)


def open_log_file(path: str | os.PathLike[str]) -> int:
    """Open a try's log file for appending, creating it and its folders owner-only."""
    make_private_dirs(os.path.dirname(os.fspath(path)) or ".")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)


# -- a log that cannot be written ------------------------------------------------------

_problem: str | None = None
_problem_lock = threading.Lock()


def describe_write_error(exc: OSError, path: str | os.PathLike[str] | None) -> str:
    """``cannot write the task log: [Errno 28] No space left on device (PATH)``."""
    what = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc) or type(exc).__name__
    return f"cannot write the task log: {what}" + (f" ({os.fspath(path)})" if path else "")


def note_write_error(exc: OSError, path: str | os.PathLike[str] | None) -> None:
    """Remember the first failure to write this try's log; the try fails with it."""
    global _problem
    with _problem_lock:
        if _problem is None:
            _problem = describe_write_error(exc, path)


def write_problem() -> str | None:
    """Why this try's log could not be written (the first failure), or None.

    With a log pump, asks it (after it has processed everything written so far)."""
    from ketch.logs import pump

    handle = pump.current()
    if handle is not None:
        problem = handle.problem()
        if problem:
            with _problem_lock:
                global _problem
                _problem = _problem or problem
    return _problem


def drain_output() -> None:
    """Flush stdout and stderr and wait until the log pump has written them out
    (before the try kills itself)."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    from ketch.logs import pump

    handle = pump.current()
    if handle is not None:
        with suppress(Exception):
            handle.problem()


class _GuardedFileIO(io.FileIO):
    """fd 1 or 2 when it is the log file: a failing write is noted and dropped, not raised
    into whatever printed (the task's own code, a traceback, the runner's lines)."""

    def __init__(self, fd: int, log_file: str) -> None:
        super().__init__(fd, "w", closefd=False)
        self._log_file = log_file
        self.writes = 0  # read by the stdout pacer
        self.written = 0
        self.on_busy: Callable[[], None] | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        self.writes += 1
        if not self.writes % WAKE_EVERY and self.on_busy is not None:
            self.on_busy()
        try:
            count = super().write(data)
            self.written += count or 0
            return count
        except OSError as exc:
            note_write_error(exc, self._log_file)
            return len(memoryview(data))


def guard_output(log_file: str, *, coalesce: bool = True) -> None:
    """Replace ``sys.stdout``/``sys.stderr`` (fds 1 and 2, the log pump's pipe) with
    streams whose failing writes (the pump is gone: EPIPE) are noted instead of raised
    into the task's own prints. They are line buffered, except during a burst of prints
    with ``coalesce`` (:mod:`ketch.worker.stdout_pacing`)."""
    from ketch.worker import stdout_pacing

    paced = []
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        raw = _GuardedFileIO(fd, log_file)
        stream = io.TextIOWrapper(
            io.BufferedWriter(raw, buffer_size=_BURST_BUFFER_BYTES),
            encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or "strict",
            line_buffering=True,
        )
        setattr(sys, name, stream)
        paced.append((stream, raw))
    if coalesce:
        stdout_pacing.pace(paced)


# During a burst, a write to the pipe carries up to this much (the pipe holds 64 KiB).
_BURST_BUFFER_BYTES = 32 * 1024
