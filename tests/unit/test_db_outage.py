"""Database outages are quiet and short (issue 7): the outage tracker, which errors count
as an outage, the web's 503 while a real PostgreSQL server is stopped, and the
scheduler's probe-and-resume."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InternalError, OperationalError

from ketch.api.app import create_app
from ketch.config import get_settings
from ketch.db.engine import get_engine
from ketch.db.migrate import migrate
from ketch.db.outage import OutageTracker, is_db_unavailable, reason
from ketch.scheduler.loop import Scheduler
from tests.support.fake_executor import FakeExecutor
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.web import local_client
from tests.unit.test_execution_api import make_try

# -- the tracker -----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def records(caplog: pytest.LogCaptureFixture, name: str) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == name]


def test_tracker_logs_one_warning_per_outage_and_one_info_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    clock = FakeClock()
    tracker = OutageTracker(logging.getLogger("test.outage"), clock=clock)
    assert tracker.succeeded() is None and not tracker.down
    assert tracker.failed("connection refused") is True
    clock.now += 2.5
    assert tracker.failed("connection refused") is False
    assert tracker.failed("connection refused") is False
    assert tracker.down and tracker.failures == 3
    clock.now += 1.0
    assert tracker.succeeded() == pytest.approx(3.5)
    assert tracker.succeeded() is None
    assert records(caplog, "test.outage") == [
        ("WARNING", "database unavailable: connection refused"),
        ("DEBUG", "database still unavailable: connection refused"),
        ("DEBUG", "database still unavailable: connection refused"),
        ("INFO", "database reachable again after 3.5s (3 failed attempts)"),
    ]
    # The next outage is logged again.
    tracker.failed("disk full")
    assert records(caplog, "test.outage")[-1] == ("WARNING", "database unavailable: disk full")


def test_tracker_is_thread_safe(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.threads")
    tracker = OutageTracker(logging.getLogger("test.threads"))
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(200):
            tracker.failed("down")
        barrier.wait()
        for _ in range(200):
            tracker.succeeded()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    levels = [level for level, _ in records(caplog, "test.threads")]
    assert levels == ["WARNING", "INFO"]
    assert "(1600 failed attempts)" in records(caplog, "test.threads")[1][1]


def test_what_counts_as_an_outage_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (a INTEGER PRIMARY KEY)").connection.commit()
    read_only = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(OperationalError) as refused, read_only.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert is_db_unavailable(refused.value)
    assert reason(refused.value) == "attempt to write a readonly database"
    writable = create_engine(f"sqlite:///{path}")
    with pytest.raises(OperationalError) as mistake, writable.begin() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_db_unavailable(mistake.value)  # a mistake in the statement
    with pytest.raises(IntegrityError) as duplicate, writable.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert not is_db_unavailable(duplicate.value)
    assert not is_db_unavailable(RuntimeError("not a database error"))
    read_only.dispose()
    writable.dispose()


# -- a real PostgreSQL server, stopped and started -------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this module's own: the tests stop it, which the shared one must not be."""
    server = start_postgres()
    try:
        yield server
    finally:
        with suppress(subprocess.CalledProcessError):  # already stopped by a failed test
            server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
def pg_url(own_postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = own_postgres.create_database(f"outage_{time.monotonic_ns()}")
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", url)
    get_settings.cache_clear()
    migrate(get_engine(url))
    yield url
    if not _accepting(own_postgres):
        own_postgres.start()  # leave the server up for the next test


def _accepting(server: PostgresServer) -> bool:
    import psycopg

    try:
        psycopg.connect(server.admin_url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def test_what_counts_as_an_outage_on_postgresql(own_postgres: PostgresServer, pg_url: str) -> None:
    import psycopg

    engine = get_engine(pg_url)
    with psycopg.connect(own_postgres.admin_url, autocommit=True) as admin:
        admin.execute(
            f'ALTER DATABASE "{engine.url.database}" SET default_transaction_read_only = on'
        )
    engine.dispose()
    with pytest.raises(InternalError) as read_only, engine.begin() as conn:
        conn.execute(text("UPDATE health_probe SET checked_at = now()"))
    assert is_db_unavailable(read_only.value)
    assert reason(read_only.value) == "cannot execute UPDATE in a read-only transaction"
    with pytest.raises(DBAPIError) as mistake, engine.begin() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_db_unavailable(mistake.value)
    own_postgres.stop()
    with pytest.raises(OperationalError) as down, engine.begin() as conn:
        conn.execute(text("SELECT 1"))
    assert is_db_unavailable(down.value)
    assert "Connection refused" in reason(down.value)
    assert "\n" not in reason(down.value)


def test_web_answers_503_once_logged_while_postgresql_is_stopped(
    own_postgres: PostgresServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a_try = make_try(get_engine(pg_url))
    headers = a_try.headers()
    with local_client(create_app(get_settings())) as client:
        assert (
            client.post(
                "/execution/try/start", json={"pid": 1, "hostname": "h"}, headers=headers
            ).status_code
            == 200
        )
        assert client.post("/execution/try/heartbeat", json={}, headers=headers).status_code == 204
        own_postgres.stop()
        answers = [
            client.post("/execution/try/heartbeat", json={}, headers=headers) for _ in range(5)
        ]
        answers.append(client.get("/api/v1/dags"))  # REST routes too
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "1"
            detail = answer.json()["detail"]
            assert detail.startswith("database unavailable: connection failed:"), detail
            assert "Connection refused" in detail and "\n" not in detail
        own_postgres.start()
        assert client.post("/execution/try/heartbeat", json={}, headers=headers).status_code == 204
        assert client.post("/execution/try/heartbeat", json={}, headers=headers).status_code == 204
    api_lines = [(lvl, msg) for lvl, msg in records(caplog, "ketch.api") if lvl != "DEBUG"]
    assert [lvl for lvl, _ in api_lines] == ["WARNING", "INFO"], api_lines
    assert api_lines[0][1].startswith("database unavailable: connection failed:")
    assert api_lines[1][1].startswith("database reachable again after ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_mistake_is_still_a_500_not_a_503(sqlite_engine: Engine) -> None:
    app = create_app(get_settings())

    @app.get("/broken")
    def broken() -> None:
        with sqlite_engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))

    with local_client(app, raise_server_exceptions=False) as client:
        assert client.get("/broken").status_code == 500


# -- the scheduler: probe, then resume at once -----------------------------------------


class Probes:
    """Stands in for the scheduler's probe: fails ``failures`` times, then answers."""

    def __init__(self, calls: list[str], failures: int) -> None:
        self.calls = calls
        self.failures = failures

    def __call__(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.calls.append("probe: refused")
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        self.calls.append("probe: ok")


def scheduler_on(engine: Engine) -> Scheduler:
    scheduler = Scheduler(get_settings(), engine, FakeExecutor(engine, {}))
    scheduler.db_probe_interval = 0.01
    return scheduler


def test_scheduler_resumes_the_step_as_soon_as_a_probe_answers(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ketch.scheduler.loop")
    scheduler = scheduler_on(sqlite_engine)
    calls: list[str] = []
    monkeypatch.setattr(scheduler, "_probe_database", Probes(calls, failures=4))
    outcomes = iter([OperationalError("x", {}, Exception("server closed the connection")), True])

    def step() -> bool:
        calls.append("step")
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert scheduler._retrying(threading.Event(), step) is True
    assert calls == ["step", *["probe: refused"] * 4, "probe: ok", "step"]
    lines = [(lvl, msg) for lvl, msg in records(caplog, "ketch.scheduler.loop") if lvl != "DEBUG"]
    assert [lvl for lvl, _ in lines] == ["WARNING", "INFO"]
    assert lines[0][1] == "database unavailable: server closed the connection"
    assert lines[1][1].startswith("database reachable again after ")


def test_scheduler_backs_off_when_the_database_answers_but_the_step_fails(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = Scheduler(get_settings(), sqlite_engine, FakeExecutor(sqlite_engine, {}))
    monkeypatch.setattr(scheduler.settings.scheduler, "db_retry_max_interval", 4.0)
    waits: list[float] = []
    # The database answers the probe at once (True: it had been unreachable) for the
    # fourth failure only; the step fails (read-only, disk full) six times.
    unreachable = iter([False, False, False, True, False, False])

    def await_database(_stop: threading.Event, backoff: float) -> bool:
        waits.append(backoff)
        return next(unreachable)

    monkeypatch.setattr(scheduler, "_await_database", await_database)
    failures = 6

    def step() -> bool:
        nonlocal failures
        if failures:
            failures -= 1
            raise OperationalError("x", {}, Exception("database or disk is full"))
        return False

    assert scheduler._retrying(threading.Event(), step) is False
    # Doubling up to db_retry_max_interval while the database answers; back to the probe
    # interval once it was unreachable and came back.
    assert waits == [0.5, 1.0, 2.0, 4.0, 0.5, 1.0]


def test_await_database_returns_as_soon_as_an_unreachable_database_answers(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = scheduler_on(sqlite_engine)
    calls: list[str] = []
    monkeypatch.setattr(scheduler, "_probe_database", Probes(calls, failures=3))
    # However long the back-off, a database that was down and answers again ends the wait.
    assert scheduler._await_database(threading.Event(), 3600.0) is True
    assert calls == ["probe: refused"] * 3 + ["probe: ok"]
    calls.clear()
    assert scheduler._await_database(threading.Event(), 0.05) is False  # it answered all along
    assert calls and set(calls) == {"probe: ok"}
    stop = threading.Event()
    stop.set()
    assert scheduler._await_database(stop, 3600.0) is False  # shutting down: no wait


def test_scheduler_waits_out_a_real_postgresql_restart(
    own_postgres: PostgresServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ketch.scheduler.loop")
    engine = get_engine(pg_url)
    scheduler = Scheduler(get_settings(), engine, FakeExecutor(engine, {}))
    probes = 0
    real_probe = scheduler._probe_database

    def counted_probe() -> None:
        nonlocal probes
        probes += 1
        real_probe()

    scheduler._probe_database = counted_probe  # type: ignore[method-assign]
    steps = 0

    def step() -> bool:
        nonlocal steps
        steps += 1
        with engine.begin() as conn:
            conn.execute(text("UPDATE health_probe SET checked_at = now()"))
        return True

    own_postgres.stop()
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(scheduler._retrying(threading.Event(), step))
    )
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive() and not result  # still waiting, probing
    probes_while_down = probes
    own_postgres.start()
    thread.join(30)
    assert result == [True]
    assert probes_while_down >= 2  # probed every 0.5 s, not backing off to 30 s
    assert steps == 2  # the step failed once, then ran once more: right after a probe answered
    lines = [msg for lvl, msg in records(caplog, "ketch.scheduler.loop")]
    assert len(lines) == 2 and lines[1].startswith("database reachable again after ")
