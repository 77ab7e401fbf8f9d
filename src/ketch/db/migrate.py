"""Alembic migrations, run from code (no alembic.ini needed by users).

``ketch db migrate`` and every server start call :func:`migrate`; it is idempotent.

``ketch scheduler`` and ``ketch web`` often start at the same moment on a fresh
database, and Alembic does not guard against a second migration running beside the
first (both see no ``alembic_version`` table and both create it: "table
alembic_version already exists"). So a migration runs under a lock of its database:
on PostgreSQL a session-level advisory lock (:data:`PG_LOCK_ID`), on SQLite an
exclusive ``flock`` of a file beside the database (``ketch.db-migrate.lock``, kept:
removing it would let a third process lock a new file while the second holds the old
one). The process that waited then finds the schema current and has nothing to do.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from ketch.db.engine import DatabaseUnavailable, check_connection
from ketch.db.models import DEFAULT_POOL_NAME, DEFAULT_POOL_SLOTS, Pool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
PG_LOCK_ID = 0x6B65_7463_685F_6462  # "ketch_db": pg_advisory_lock's bigint key
LOCK_FILE_SUFFIX = "-migrate.lock"


class MigrationLockTimeout(DatabaseUnavailable):
    """Another process held the migration lock for longer than we would wait (a
    :class:`DatabaseUnavailable`: the servers' start says it in one line)."""


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, *, lock_wait: float = 60.0) -> None:
    """Bring the schema to the newest revision and make sure the default pool exists.

    Migrations of one database run one at a time (see the module docstring); a process
    waits up to ``lock_wait`` seconds for another one's migration to end. On SQLite a
    migration may also meet "database is locked" (a running scheduler writing): it
    retries within the same time.
    """
    from sqlalchemy.orm import Session

    check_connection(engine)
    deadline = time.monotonic() + lock_wait
    with migration_lock(engine, deadline):
        delay = 0.1
        while True:
            try:
                command.upgrade(alembic_config(engine), "head")
                break
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        with Session(engine) as session:
            if session.get(Pool, DEFAULT_POOL_NAME) is None:
                session.add(
                    Pool(
                        pool=DEFAULT_POOL_NAME,
                        slots=DEFAULT_POOL_SLOTS,
                        description="Default pool",
                    )
                )
                session.commit()


@contextmanager
def migration_lock(engine: Engine, deadline: float) -> Iterator[None]:
    """Held by one process (or engine) at a time per database, until ``deadline``
    (``time.monotonic()``) at most for the wait: :class:`MigrationLockTimeout` then."""
    backend = engine.dialect.name
    if backend == "postgresql":
        with _advisory_lock(engine, deadline):
            yield
        return
    database = engine.url.database if backend == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # another database, or one only this engine can see
        return
    with _file_lock(Path(database).expanduser(), deadline):
        yield


def _wait_step(deadline: float, delay: float, what: str) -> float:
    if time.monotonic() > deadline:
        raise MigrationLockTimeout(
            f"another ketch process has been migrating {what} for too long"
            " (its migration lock is still held); try again once it is done"
        )
    time.sleep(delay)
    return min(delay * 2, 1.0)


@contextmanager
def _advisory_lock(engine: Engine, deadline: float) -> Iterator[None]:
    """A session-level advisory lock on a connection of its own (autocommit, so it holds
    no transaction open while Alembic migrates on another connection)."""
    what = engine.url.render_as_string(hide_password=True)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        delay = 0.05
        while not conn.execute(
            text("SELECT pg_try_advisory_lock(:id)"), {"id": PG_LOCK_ID}
        ).scalar():
            delay = _wait_step(deadline, delay, what)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": PG_LOCK_ID})


@contextmanager
def _file_lock(database: Path, deadline: float) -> Iterator[None]:
    """An exclusive ``flock`` of ``{database}-migrate.lock`` (private, as the database).
    Each call opens the file itself, so two engines of one process exclude each other
    too; the lock goes with the descriptor, also when the process dies."""
    path = database.with_name(database.name + LOCK_FILE_SUFFIX)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                delay = _wait_step(deadline, delay, str(database))
        yield
    finally:
        os.close(fd)
