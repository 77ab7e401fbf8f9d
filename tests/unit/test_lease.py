"""The scheduler lease (``ketch.scheduler.lease``): statements on both backends, the fence
of the scheduler's sessions, and the standby/takeover paths on a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from ketch.config import SchedulerSettings, get_settings
from ketch.db.engine import make_engine
from ketch.db.models import Pool
from ketch.db.models import SchedulerLease as LeaseRow
from ketch.scheduler.lease import term as term_mod
from ketch.scheduler.lease.fence import LeaseLost, install_fence
from ketch.scheduler.lease.holder import application_name, tag_connections
from ketch.scheduler.lease.scheduler_lease import SchedulerLease
from ketch.scheduler.lease.sqlite_lock import AnotherScheduler
from ketch.scheduler.lease.statements import (
    insert_lease,
    read_lease,
    release_lease,
    renew_lease,
    take_lease,
)
from ketch.scheduler.loop import Scheduler
from ketch.states import TaskInstanceState
from tests.support.fake_executor import FakeExecutor, insert_dag, serialized_dag, ti_states, trigger

FAST = SchedulerSettings(lease_ttl=1.0, lease_renew_interval=0.2, standby_poll_interval=0.2)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def backdate(engine: Engine, seconds: float) -> None:
    """Expire the lease without marking it released (expires_at > renewed_at stays true)."""
    with engine.begin() as conn:
        row = conn.execute(select(LeaseRow.renewed_at, LeaseRow.expires_at)).one()
        conn.execute(
            update(LeaseRow).values(
                renewed_at=row[0] - timedelta(seconds=seconds),
                expires_at=row[1] - timedelta(seconds=seconds),
            )
        )


# -- statements, both backends ---------------------------------------------------------------------


def test_acquire_renew_expire_takeover_increments_the_token(engine: Engine) -> None:
    with engine.connect() as conn:
        assert read_lease(conn) is None
        assert insert_lease(conn, "a", 30) == 1
        conn.commit()
        assert insert_lease(conn, "b", 30) is None  # already there
        conn.commit()
        seen = read_lease(conn)
        assert seen is not None
        assert (seen.holder, seen.token, seen.released) == ("a", 1, False)
        assert 25 < seen.remaining <= 30
        # b cannot take an unexpired lease, a renews it.
        assert take_lease(conn, "b", 30, seen.token, require_expired=True) is None
        assert renew_lease(conn, "a", 1, 30)
        conn.commit()
    backdate(engine, 60)
    with engine.connect() as conn:
        seen = read_lease(conn)
        assert seen is not None and seen.remaining < 0 and not seen.released
        assert take_lease(conn, "b", 30, seen.token, require_expired=True) == 2
        conn.commit()
        # The old holder can neither renew nor release any more; a stale CAS loses.
        assert not renew_lease(conn, "a", 1, 30)
        assert not release_lease(conn, "a", 1)
        assert take_lease(conn, "c", 30, seen.token, require_expired=False) is None
        assert release_lease(conn, "b", 2)
        conn.commit()
        released = read_lease(conn)
        assert released is not None and released.released and released.remaining <= 0
        assert take_lease(conn, "c", 30, 2, require_expired=True) == 3
        conn.commit()


def fenced_sessions(engine: Engine, lease: SchedulerLease) -> sessionmaker[Session]:
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    install_fence(sessions, lease.fence())
    return sessions


def test_a_fenced_session_cannot_commit_after_a_takeover(engine: Engine) -> None:
    lease = SchedulerLease(engine, SchedulerSettings(lease_ttl=30), holder="a")
    try:
        assert lease.acquire(threading.Event())
        lost: list[str] = []
        lease.on_lost = lost.append
        sessions = fenced_sessions(engine, lease)
        with sessions() as session:
            session.add(Pool(pool="before", slots=1))
            session.commit()  # still the holder
        with engine.begin() as conn:  # another scheduler takes over
            assert take_lease(conn, "b", 30, 1, require_expired=False) == 2
        with sessions() as session:
            session.add(Pool(pool="after", slots=1))
            with pytest.raises(LeaseLost, match="took over"):
                session.commit()
        with sessions() as session:  # bulk statements are fenced too
            session.execute(update(Pool).values(slots=5))
            with pytest.raises(LeaseLost):
                session.commit()
        with Session(engine) as session:
            pools = {p.pool: p.slots for p in session.scalars(select(Pool))}
        assert pools.pop("before") == 1
        assert "after" not in pools and 5 not in pools.values()
        assert len(lost) == 1 and not lease.held
    finally:
        lease.close()


def test_read_only_transactions_are_not_checked(engine: Engine) -> None:
    checks: list[int] = []
    sessions = sessionmaker(bind=engine)
    install_fence(sessions, lambda _s: checks.append(1))
    with sessions() as session:
        session.scalars(select(Pool)).all()
        session.commit()
    assert checks == []
    with sessions() as session:
        session.add(Pool(pool="p", slots=1))
        session.commit()
        session.scalars(select(Pool)).all()  # a new transaction: nothing written
        session.commit()
    assert checks == [1]


def test_losing_the_lease_is_not_an_exception_the_loop_swallows() -> None:
    # The scheduling loop catches Exception so one failing step never kills it.
    assert not issubclass(LeaseLost, Exception)


def test_a_scheduler_that_lost_its_lease_writes_no_decision(engine: Engine) -> None:
    """The real scheduling loop, fenced: after a takeover nothing it decides is written."""
    insert_dag(engine, serialized_dag("d", {"a": {}, "b": {"upstream": ["a"]}}))
    run_id = trigger(engine, "d")
    executor = FakeExecutor(engine)
    lease = SchedulerLease(engine, SchedulerSettings(lease_ttl=30), holder="old")
    try:
        assert lease.acquire(threading.Event())
        scheduler = Scheduler(get_settings(), engine, executor, token_signer=lambda _k, _i: "token")
        scheduler.ctx.fence_with(lease.fence())
        scheduler.start_executor()
        with engine.begin() as conn:
            assert take_lease(conn, "new", 30, 1, require_expired=False) == 2
        with pytest.raises(LeaseLost):
            scheduler.run_once()
        assert executor.launched == []
        assert set(ti_states(engine, run_id).values()) == {None}
    finally:
        executor.stop()
        lease.close()


def test_a_fenced_scheduler_that_holds_the_lease_runs_normally(engine: Engine) -> None:
    from tests.support.fake_executor import drive, run_state

    insert_dag(engine, serialized_dag("d", {"a": {}, "b": {"upstream": ["a"]}}))
    run_id = trigger(engine, "d")
    executor = FakeExecutor(engine)
    lease = SchedulerLease(engine, SchedulerSettings(lease_ttl=30), holder="me")
    try:
        assert lease.acquire(threading.Event())
        scheduler = Scheduler(get_settings(), engine, executor, token_signer=lambda _k, _i: "token")
        scheduler.ctx.fence_with(lease.fence())
        scheduler.start_executor()
        drive(scheduler, lambda: run_state(engine, run_id) == "success")
        assert set(ti_states(engine, run_id).values()) == {TaskInstanceState.SUCCESS.value}
    finally:
        executor.stop()
        lease.close()


# -- SQLite: one scheduler -----------------------------------------------------------------------


def test_sqlite_allows_one_scheduler_and_says_so(sqlite_engine: Engine, ketch_home: Path) -> None:
    first = SchedulerLease(sqlite_engine, FAST)
    second = SchedulerLease(sqlite_engine, FAST)
    try:
        first.prepare()
        with pytest.raises(AnotherScheduler) as excinfo:
            second.prepare()
        message = str(excinfo.value)
        assert "another ketch scheduler (pid " in message
        assert "SQLite supports one scheduler" in message and "PostgreSQL" in message
        # The holder takes the row at once (no waiting), whatever a dead one left there.
        with sqlite_engine.begin() as conn:
            insert_lease(conn, "dead-holder", 3600)
        assert first.acquire(threading.Event())
        assert first.token == 2
        first.release()
        second.prepare()  # the lock went with the first one
    finally:
        first.close()
        second.close()


# -- PostgreSQL: standby and takeover ----------------------------------------------------------


@pytest.fixture
def pg_url(postgres_server: object, ketch_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from tests.conftest import _db_counter
    from tests.support.postgres import PostgresServer

    assert isinstance(postgres_server, PostgresServer)
    url = postgres_server.create_database(f"ketch_lease_{next(_db_counter)}")
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", url)
    get_settings.cache_clear()
    from ketch.db.migrate import migrate

    migrate(make_engine(url))
    return url


@pytest.fixture
def engines(pg_url: str) -> Iterator[list[Engine]]:
    """A separate engine per scheduler, as two processes would have."""
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def new_lease(
    engines: list[Engine], url: str, settings: SchedulerSettings, holder: str
) -> SchedulerLease:
    engine = make_engine(url)
    tag_connections(engine, holder, settings)
    engines.append(engine)
    return SchedulerLease(engine, settings, holder=holder)


class Standby:
    """``lease.acquire`` on a thread; ``took`` is how long it waited."""

    def __init__(self, lease: SchedulerLease) -> None:
        self.lease = lease
        self.stop = threading.Event()
        self.got: bool | None = None
        self.took = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        self.got = self.lease.acquire(self.stop)
        self.took = time.monotonic() - start

    def result(self, timeout: float) -> bool | None:
        self.thread.join(timeout)
        self.stop.set()
        self.thread.join(5)
        return self.got


def test_standby_waits_then_takes_over_at_once_when_the_holder_releases(
    engines: list[Engine], pg_url: str
) -> None:
    slow = SchedulerSettings(lease_ttl=30, lease_renew_interval=1, standby_poll_interval=0.5)
    a = new_lease(engines, pg_url, slow, "a")
    b = new_lease(engines, pg_url, slow, "b")
    try:
        assert a.acquire(threading.Event())
        standby = Standby(b)
        time.sleep(1.5)
        assert standby.got is None  # still waiting: the lease is live
        released_at = time.monotonic()
        a.release()
        assert standby.result(10) is True
        assert time.monotonic() - released_at < 2  # not the 30 s TTL
        assert b.token == 2
    finally:
        a.close()
        b.close()


def test_holder_dead_fast_path_does_not_wait_for_expiry(engines: list[Engine], pg_url: str) -> None:
    slow = SchedulerSettings(lease_ttl=30, lease_renew_interval=1, standby_poll_interval=1)
    a = new_lease(engines, pg_url, slow, "a")
    b = new_lease(engines, pg_url, slow, "b")
    try:
        assert a.acquire(threading.Event())
        standby = Standby(b)
        time.sleep(0.5)
        # "kill -9": every session of a's process ends at once (sockets closed).
        with engines[1].begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :app"
                ),
                {"app": application_name("a")},
            )
        killed_at = time.monotonic()
        assert standby.result(10) is True
        assert time.monotonic() - killed_at < 2
        assert b.token == 2
    finally:
        a.close()
        b.close()


def test_a_paused_holder_loses_at_expiry_and_its_open_transaction_is_ended(
    engines: list[Engine],
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGSTOP in miniature: a's keeper stops renewing and a's loop sits between its fence
    check and its commit (holding the row lock). b takes over after the TTL, ends a's
    sessions, and a's commit fails; a's watchdog reports the loss."""
    a = new_lease(engines, pg_url, FAST, "a")
    b = new_lease(engines, pg_url, FAST, "b")
    frozen = threading.Event()
    real_renew = term_mod.renew_lease

    def renew(conn: object, holder: str, *args: object, **kwargs: object) -> bool:
        if holder == "a":
            frozen.wait(30)
        return real_renew(conn, holder, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(term_mod, "renew_lease", renew)
    lost: list[str] = []
    try:
        assert a.acquire(threading.Event())
        a.on_lost = lost.append
        check = a.fence()
        session = Session(engines[0])
        session.add(Pool(pool="stale", slots=1))
        session.flush()
        check(session)  # passes, and now holds FOR SHARE on the lease row
        standby = Standby(b)
        assert standby.result(15) is True
        assert standby.took >= 0.5  # waited for expiry: a's connection is alive
        assert b.token == 2
        assert "the lease row is locked by a; ending its sessions" in caplog.text
        with pytest.raises(Exception, match=r"(?i)terminat|closed|connection"):
            session.commit()
        session.close()
        wait_until(lambda: bool(lost), 5, "a's watchdog")
        assert "no renewal" in lost[0]
        with Session(engines[1]) as s:
            assert "stale" not in s.scalars(select(Pool.pool)).all()
    finally:
        frozen.set()
        a.close()
        b.close()


def test_a_scheduler_that_lost_its_lease_takes_it_back_without_waiting_for_expiry(
    engines: list[Engine], pg_url: str
) -> None:
    """A database blip longer than the TTL stops the stack; with nobody else around the same
    process leads again as soon as the database answers, under a new token."""
    slow = SchedulerSettings(lease_ttl=30, lease_renew_interval=1, standby_poll_interval=1)
    a = new_lease(engines, pg_url, slow, "a")
    try:
        assert a.acquire(threading.Event())
        term = a._term
        assert term is not None
        a._lose(term, "a test says so")
        assert not a.held
        started = time.monotonic()
        assert a.acquire(threading.Event())
        assert time.monotonic() - started < 2
        assert a.token == 2 and a.held
    finally:
        a.close()
