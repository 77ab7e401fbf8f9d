"""Engines and sessions for the metadata database.

One engine per process and URL. SQLite gets WAL mode, ``synchronous=NORMAL`` and a
busy timeout so the scheduler and the web server (threads or processes) can share
the file; PostgreSQL gets a connect timeout and pre-ping so a database that went
away is noticed on the next checkout rather than mid-transaction.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class DatabaseUnavailable(RuntimeError):
    """The metadata database cannot be reached; the message says which and why."""


class DatabaseUrlError(ValueError):
    """The database URL is not one ketch can use; the message says which schemes work."""


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _set_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _set_wal(cursor: Any, wait: float = 30.0) -> None:
    """``journal_mode=WAL``, retried while another connection holds the new database:
    switching a fresh file to WAL needs it alone, and SQLite may answer "database is
    locked" at once instead of waiting (``ketch web`` and ``ketch scheduler`` started
    together on a new database)."""
    import sqlite3
    import time

    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def make_engine(
    url: str, *, pool_size: int = 5, max_overflow: int = 10, connect_timeout: float = 10
) -> Engine:
    from ketch.config import database_url_problem

    problem = database_url_problem(url)
    if problem is not None:
        raise DatabaseUrlError(f"[database] sql_alchemy_conn: {problem}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # the reason, never the URL: it holds a password
        raise DatabaseUrlError(
            f"[database] sql_alchemy_conn: not a valid database URL: {exc}"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database).expanduser())
        # A SQLite connection is a file handle: cheap to keep. A pool at least as big as
        # the web server's worker threads avoids re-opening (and re-PRAGMA-ing) per request.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=max(pool_size, 16),
            max_overflow=max(max_overflow, 32),
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// means psycopg 3 here (the driver we ship), not psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        connect_args={"connect_timeout": int(max(1, connect_timeout))},
    )


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the configured database)."""
    from ketch.config import get_settings

    settings = get_settings()
    url = url or settings.database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(
                url,
                pool_size=settings.database.sql_alchemy_pool_size,
                max_overflow=settings.database.sql_alchemy_max_overflow,
                connect_timeout=settings.database.connect_timeout,
            )
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def dispose_engine(url: str) -> None:
    """Dispose of the engine for ``url`` and forget it (a throwaway database's, before its
    file is deleted: ``ketch dags test``)."""
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def check_connection(engine: Engine) -> None:
    """Raise DatabaseUnavailable with a readable reason if the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        safe_url = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot reach the metadata database {safe_url}: {reason}"
        ) from exc


def _create_private_file(path: Path) -> None:
    """Create the SQLite file owner-only (0600, its folders 0700) before SQLite does.

    It holds every variable and connection (encrypted) and the API token hashes; SQLite
    gives its -wal and -shm files the main file's mode, so they are private too. An
    existing file is left as it is.
    """
    from ketch.worker.task_log import make_private_dirs

    make_private_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
