"""Fixtures shared by every test: an isolated KETCH_HOME, and databases on both backends.

``db_url`` is parametrised over SQLite and PostgreSQL: a test that takes it runs
on both, against a real PostgreSQL server this suite starts itself.

Nothing outlives the session (``tests.support.cleanup``): the session has its own
TMPDIR, removed at the end, and each test one inside it; the ketch processes of a test
still running after it are killed; every process still alive at the end of the session
is killed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ketch.config import get_settings
from tests.support import cleanup
from tests.support.postgres import PostgresServer, start_postgres

_db_counter = itertools.count()


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # pytest's tmp_path folders stay in the real temporary folder (kept after a failure);
    # everything else goes to the session's own, removed at the end.
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        factory.getbasetemp()
    cleanup.begin_session()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    cleanup.end_session()


@pytest.fixture(autouse=True)
def ketch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own KETCH_HOME and no inherited KETCH__ settings."""
    import os

    for key in list(os.environ):
        if key.startswith("KETCH__") or key in ("KETCH_CONFIG", "KETCH_API_URL", "KETCH_API_TOKEN"):
            monkeypatch.delenv(key)
    home = tmp_path / "ketch_home"
    home.mkdir()
    monkeypatch.setenv("KETCH_HOME", str(home))
    # A TMPDIR of the test's own: every process it starts carries it (tests.support.cleanup).
    tmpdir = cleanup.test_tmpdir()
    if tmpdir is not None:
        monkeypatch.setenv("TMPDIR", str(tmpdir))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
    from ketch.db.engine import dispose_engines

    dispose_engines()
    # Last of the test's fixtures: what they did not stop (a SIGSTOPped try, the tries of
    # a killed scheduler) is killed now, not left to the end of the session.
    cleanup.kill_ketch_processes(tmpdir)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, ketch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A fresh, empty database URL on each backend, also set as the configured database."""
    if request.param == "sqlite":
        url = f"sqlite:///{ketch_home / 'ketch.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database(f"ketch_test_{next(_db_counter)}")
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", url)
    get_settings.cache_clear()
    return url


@pytest.fixture
def engine(db_url: str) -> Engine:
    """A migrated engine on each backend."""
    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate

    eng = get_engine(db_url)
    migrate(eng)
    return eng


@pytest.fixture
def sqlite_engine(ketch_home: Path) -> Engine:
    """A migrated SQLite engine only, for fast unit tests that need some database."""
    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate

    eng = get_engine(f"sqlite:///{ketch_home / 'ketch.db'}")
    migrate(eng)
    return eng
