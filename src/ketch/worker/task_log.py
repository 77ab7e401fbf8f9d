"""Where a try's log lives, the tee a try uses when it runs in a pod, and what happens
when the log cannot be written.

One path rule for everyone: the local executor writes the file, the REST API
and the log archive read it. The tee works on file descriptors, not on
``sys.stdout``, so output of C extensions and of child processes (a bash task)
is captured too.

A log that cannot be written (a full disk, a read-only or missing volume) must not
crash the try with an unrelated error, kill it silently, or hang it: the first failure
is remembered (:func:`note_write_error`), output goes on where it still can, and the
runner fails the try with :func:`write_problem` as its error, e.g. ``cannot write the
task log: [Errno 28] No space left on device (/logs/.../attempt=1.log)``.
"""

from __future__ import annotations

import fcntl
import io
import os
import struct
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.executors.base import TryKey

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class UnsafeLogPath(ValueError):
    """A dag_id, run_id or task_id that would put a try's log outside its own folder
    (a path separator, a NUL, or a path that resolves outside the log folder)."""


_UNSAFE_IN_NAME = ("/", "\\", "\0")


def log_path(settings_log_folder: Path, key: TryKey) -> Path:
    """``{log_folder}/dag_id=D/run_id=R/task_id=T/attempt=N.log`` (Airflow's layout).

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
    path = (
        folder
        / f"dag_id={key.dag_id}"
        / f"run_id={key.run_id}"
        / f"task_id={key.task_id}"
        / f"attempt={key.try_number}.log"
    )
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
    """Why this try's log could not be written (the first failure), or None."""
    _drain_tee()
    return _problem


def drain_output() -> None:
    """Flush stdout and stderr and, in a pod, wait until the tee has written them out
    (before the try kills itself)."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    with suppress(Exception):
        _drain_tee()


class _GuardedFileIO(io.FileIO):
    """fd 1 or 2 when it is the log file: a failing write is noted and dropped, not raised
    into whatever printed (the task's own code, a traceback, the runner's lines)."""

    def __init__(self, fd: int, log_file: str) -> None:
        super().__init__(fd, "w", closefd=False)
        self._log_file = log_file

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            note_write_error(exc, self._log_file)
            return len(memoryview(data))


def guard_output(log_file: str) -> None:
    """Replace ``sys.stdout``/``sys.stderr`` (fds 1 and 2, already the log file) with
    streams whose failing writes are noted instead of raised. For the fork server's
    children, whose output goes straight to the log file."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        stream = io.TextIOWrapper(
            io.BufferedWriter(_GuardedFileIO(fd, log_file)),
            encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or "strict",
            line_buffering=True,
        )
        setattr(sys, name, stream)


# -- the tee (pods) ----------------------------------------------------------------------


class _Tee:
    """The pump thread of :func:`tee_output`: pipe -> the old stdout and the log file."""

    def __init__(self, read_fd: int, saved_out: int, log_fd: int | None, path: Path) -> None:
        self.read_fd = read_fd
        self.saved_out = saved_out
        self.log_fd = log_fd
        self.path = path
        self.idle = True  # between chunks: everything read so far was written out
        self.thread = threading.Thread(target=self._pump, name="ketch-log-tee", daemon=True)

    def _pump(self) -> None:
        while True:
            self.idle = True
            chunk = os.read(self.read_fd, 65536)
            self.idle = False
            if not chunk:
                break
            with suppress(OSError):  # the pod's stdout: best effort
                _write_all(self.saved_out, chunk)
            if self.log_fd is not None:
                try:
                    _write_all(self.log_fd, chunk)
                except OSError as exc:  # the rest of this chunk is lost; the try will fail
                    note_write_error(exc, self.path)
        os.close(self.read_fd)

    def drain(self, timeout: float = 2.0) -> None:
        """Wait until what was written to fds 1/2 so far has gone through the pump."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline and self.thread.is_alive():
            if self.idle and _unread(self.read_fd) == 0:
                quiet += 1
                if quiet >= 2:  # twice in a row, a little apart: the pump is waiting for more
                    return
            else:
                quiet = 0
            time.sleep(0.002)


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _unread(fd: int) -> int:
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


_tee: _Tee | None = None


def _drain_tee() -> None:
    tee = _tee
    if tee is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        tee.drain()


@contextmanager
def tee_output(path: Path) -> Iterator[None]:
    """Send fds 1 and 2 to their old target and appended to ``path`` until the block ends.

    A log file that cannot be opened is noted (see :func:`write_problem`) and output
    goes to the old target only; one that fails later is noted the same way, and the
    pump keeps serving the old target so the try never blocks on a full pipe.
    """
    global _tee
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        log_fd: int | None = open_log_file(path)
    except OSError as exc:
        note_write_error(exc, path)
        log_fd = None
    saved_out = os.dup(1)
    saved_err = os.dup(2)
    read_fd, write_fd = os.pipe()
    tee = _tee = _Tee(read_fd, saved_out, log_fd, path)
    tee.thread.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        tee.thread.join(timeout=5)  # children still holding the pipe must not hang the exit
        _tee = None
        os.close(saved_err)
        if not tee.thread.is_alive():
            os.close(saved_out)
            if log_fd is not None:
                os.close(log_fd)
