"""SQLite supports one scheduler: an exclusive file lock next to the database.

A second scheduler must fail at start with a clear message rather than share a database
that cannot hold a standby; the kernel drops the lock when the holder dies, however it
dies, so a restart after kill -9 is immediate.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url


class AnotherScheduler(RuntimeError):
    """A second scheduler on a SQLite database (which supports one); the message says so."""


class SqliteSchedulerLock:
    """An exclusive ``flock`` on ``<database>.scheduler.lock`` holding the owner's pid.

    The kernel drops it when the process dies, however it dies. The file descriptor is
    close-on-exec (Python's default), so processes the scheduler starts never keep it.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".scheduler.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AnotherScheduler(
                f"another ketch scheduler (pid {other}) is running against this SQLite "
                "database; SQLite supports one scheduler — use PostgreSQL for a standby"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def sqlite_database_path(engine: Engine) -> Path | None:
    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser().resolve()
