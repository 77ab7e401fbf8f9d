"""First migrations started at the same moment on a fresh database (``ketch web`` and
``ketch scheduler`` started together): every one succeeds and the schema is whole.

The migrations run in real processes (spawned, each with its own engine), released
together by a barrier, on several fresh databases in a row, on SQLite and on the
suite's PostgreSQL server. Without the migration lock they fail with "table
alembic_version already exists" (SQLite) or a duplicate key in the catalog
(PostgreSQL).
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select

PROCESSES = 3
DATABASES = 4
_names = itertools.count()


def migrate_when_released(urls: list[str], barrier: Any, results: Any) -> None:
    """A process of its own: for each database, wait for the others, then migrate."""
    from ketch.db.engine import make_engine
    from ketch.db.migrate import migrate

    engines = [make_engine(url) for url in urls]  # made before the race, not in it
    for url, engine in zip(urls, engines, strict=True):
        barrier.wait(60)
        try:
            migrate(engine, lock_wait=60)
            results.put((url, None))
        except Exception:
            results.put((url, traceback.format_exc()))
        finally:
            engine.dispose()


def fresh_urls(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    if backend == "sqlite":
        return [f"sqlite:///{tmp_path / f'fresh{n}' / 'ketch.db'}" for n in range(DATABASES)]
    server = request.getfixturevalue("postgres_server")
    return [
        server.create_database(f"ketch_migrate_race_{next(_names)}_{int(time.time())}")
        for _ in range(DATABASES)
    ]


def expected_schema(engine: Engine) -> tuple[set[str], set[str]]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ketch.db.migrate import alembic_config

    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads = set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    return current, heads


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_first_migrations_at_the_same_moment(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from ketch.db.engine import make_engine
    from ketch.db.models import DEFAULT_POOL_NAME, Base, Pool

    urls = fresh_urls(backend, request, tmp_path)
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(PROCESSES)
    results = spawn.Queue()
    processes = [
        spawn.Process(target=migrate_when_released, args=(urls, barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120) for _ in range(PROCESSES * DATABASES)]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
    failures = [error for _url, error in outcomes if error is not None]
    assert not failures, f"{len(failures)} of {len(outcomes)} migrations failed:\n{failures[0]}"
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    for url in urls:
        engine = make_engine(url)
        try:
            current, heads = expected_schema(engine)
            assert current == heads and heads, url
            assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
            with engine.connect() as conn:
                pools = conn.execute(select(Pool.pool)).scalars().all()
            assert pools == [DEFAULT_POOL_NAME]
        finally:
            engine.dispose()


def test_a_held_lock_is_waited_for_then_times_out(tmp_path: Path) -> None:
    """While another migration holds the lock, a second one waits for it, and gives up
    with a message saying why once its wait is over."""
    from ketch.db.engine import make_engine
    from ketch.db.migrate import MigrationLockTimeout, migrate, migration_lock

    url = f"sqlite:///{tmp_path / 'ketch.db'}"
    holder, waiter = make_engine(url), make_engine(url)
    try:
        with migration_lock(holder, time.monotonic() + 5):
            started = time.monotonic()
            with pytest.raises(MigrationLockTimeout, match="another ketch process"):
                migrate(waiter, lock_wait=0.5)
            assert time.monotonic() - started >= 0.5
        migrate(waiter, lock_wait=0.5)  # released: it migrates
        current, heads = expected_schema(waiter)
        assert current == heads
    finally:
        holder.dispose()
        waiter.dispose()
