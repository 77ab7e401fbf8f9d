"""The scheduler lease: one active scheduler per database, every write fenced.

Why a lease in a table rather than only a PostgreSQL advisory lock: an advisory lock
says who *holds* it, but a scheduler that was paused (SIGSTOP, a long GC, a frozen VM)
or cut off keeps believing it holds it, and its in-flight transactions would still
commit after another scheduler took over. A row with a **fencing token** lets every
transaction of the scheduler check, under a row lock held to its commit, that it is
still the holder — so a returning scheduler cannot write a single decision.

The row (``scheduler_lease``: holder, fencing_token, acquired_at, renewed_at,
expires_at) is timed by the **database clock** (``statement_timestamp()``, one instant
per statement), so clock skew between hosts cannot matter:

- acquire: insert the row, or take it with a compare-and-set UPDATE on the token seen
  when it expired, was released, or its holder is provably dead; the token increments;
- renew: every ``lease_renew_interval``, ``UPDATE ... WHERE holder = me AND token =
  mine`` pushes ``expires_at`` to ``now + lease_ttl``; a watchdog stops the scheduler
  when the lease may have expired before a renewal got through;
- fence: before each commit of a scheduling transaction that wrote something,
  ``SELECT fencing_token ... FOR SHARE``: a takeover's UPDATE waits for transactions
  that passed the check, and every later check fails (:class:`LeaseLost`);
- release (SIGTERM): ``expires_at = renewed_at = now``; a standby takes over at once.

Fast paths on PostgreSQL, so failover does not always wait for the TTL: the holder
keeps a session-level advisory lock keyed on its holder id on its lease connection. A
standby waits on that lock (``lock_timeout``-bounded): it is granted the moment the
holder's connection closes — the process died or its socket was torn down — and the
standby takes over at once. A holder that is paused or partitioned keeps its server
connection, so the standby waits for expiry; then it terminates the old holder's
backends (found by ``application_name``), so a paused transaction can neither block
the takeover with its row locks nor commit later.

SQLite supports one scheduler: an exclusive ``flock`` on a file next to the database
(released by the kernel when the process dies, so a restart after kill -9 is
immediate); a second scheduler exits with a clear error. The row is written there too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Table,
    event,
    extract,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from ketch.config import SchedulerSettings
from ketch.db.models import SchedulerLease as LeaseRow
from ketch.db.models import UtcDateTime
from ketch.db.outage import OutageTracker

log = logging.getLogger("ketch.scheduler.lease")
# While the database is unavailable a standby (or a leader that lost it) probes this often.
_OUTAGE_PROBE_SECONDS = 0.5

LEASE_NAME = "scheduler"
# Namespace (first int4 key) of ketch's advisory locks; the second is hashtext(holder).
_ADVISORY_NAMESPACE = 0x6B657463  # "ketc"
_TAKEOVER_LOCK_TIMEOUT_MS = 1000
_LOCK_NOT_AVAILABLE = "55P03"
_T = cast(Table, LeaseRow.__table__)


class LeaseLost(BaseException):
    """This process is not (or can no longer know it is) the active scheduler.

    A ``BaseException`` on purpose: the scheduling loop catches ``Exception`` so that one
    failing step never kills it; losing the lease must end the loop, never be retried.
    """


class AnotherScheduler(RuntimeError):
    """A second scheduler on a SQLite database (which supports one); the message says so."""


def new_holder_id() -> str:
    """Unique per process start: host (the pod name on Kubernetes), pid and a random tail
    (pid 1 in every container, so the tail tells restarts apart)."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(3)}"


def application_name(holder: str) -> str:
    """The ``application_name`` of a holder's PostgreSQL connections (63 bytes at most),
    how a new holder finds the old one's backends to terminate them."""
    return f"ketch-scheduler/{holder}"[:63]


# -- statements (both backends; PostgreSQL times come from the database clock) ---------------


def _is_pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _now(pg: bool) -> ColumnElement[datetime]:
    if pg:
        return func.statement_timestamp(type_=DateTime(timezone=True))
    return literal(datetime.now(UTC), UtcDateTime())  # SQLite: one host, Python's clock


def _later(pg: bool, seconds: float) -> ColumnElement[datetime]:
    if pg:
        return _now(pg) + timedelta(seconds=seconds)
    return literal(datetime.now(UTC) + timedelta(seconds=seconds), UtcDateTime())


@dataclass(frozen=True)
class LeaseView:
    """The lease row as a candidate sees it."""

    holder: str
    token: int
    remaining: float  # seconds until expires_at by the database clock; <= 0: expired
    released: bool  # the holder gave it up (expires_at == renewed_at)


def read_lease(conn: Connection, name: str = LEASE_NAME) -> LeaseView | None:
    pg = _is_pg(conn)
    if pg:
        remaining: ColumnElement[Any] = extract("epoch", _T.c.expires_at - _now(pg))
        row = conn.execute(
            select(
                _T.c.holder, _T.c.fencing_token, remaining, _T.c.expires_at, _T.c.renewed_at
            ).where(_T.c.name == name)
        ).one_or_none()
        if row is None:
            return None
        return LeaseView(row[0], row[1], float(row[2]), row[3] <= row[4])
    srow = conn.execute(
        select(_T.c.holder, _T.c.fencing_token, _T.c.expires_at, _T.c.renewed_at).where(
            _T.c.name == name
        )
    ).one_or_none()
    if srow is None:
        return None
    left = (srow[2] - datetime.now(UTC)).total_seconds()
    return LeaseView(srow[0], srow[1], left, srow[2] <= srow[3])


def insert_lease(conn: Connection, holder: str, ttl: float, name: str = LEASE_NAME) -> int | None:
    """Create the row (token 1) if there is none; None if another scheduler was faster."""
    pg = _is_pg(conn)
    dialect_insert = pg_insert if pg else sqlite_insert
    stmt = (
        dialect_insert(_T)
        .values(
            name=name,
            holder=holder,
            fencing_token=1,
            acquired_at=_now(pg),
            renewed_at=_now(pg),
            expires_at=_later(pg, ttl),
        )
        .on_conflict_do_nothing(index_elements=[_T.c.name])
        .returning(_T.c.fencing_token)
    )
    row = conn.execute(stmt).one_or_none()
    return None if row is None else int(row[0])


def take_lease(
    conn: Connection,
    holder: str,
    ttl: float,
    seen_token: int,
    *,
    require_expired: bool,
    name: str = LEASE_NAME,
) -> int | None:
    """Compare-and-set takeover: the new token, or None when the row moved on (renewed,
    taken by someone else). ``require_expired`` is re-checked against the newest row
    version (PostgreSQL re-evaluates the WHERE after waiting for a row lock)."""
    pg = _is_pg(conn)
    cond = [_T.c.name == name, _T.c.fencing_token == seen_token]
    if require_expired:
        cond.append((_T.c.expires_at <= _now(pg)) | (_T.c.expires_at <= _T.c.renewed_at))
    row = conn.execute(
        update(_T)
        .where(*cond)
        .values(
            holder=holder,
            fencing_token=_T.c.fencing_token + 1,
            acquired_at=_now(pg),
            renewed_at=_now(pg),
            expires_at=_later(pg, ttl),
        )
        .returning(_T.c.fencing_token)
    ).one_or_none()
    return None if row is None else int(row[0])


def renew_lease(
    conn: Connection, holder: str, token: int, ttl: float, name: str = LEASE_NAME
) -> bool:
    pg = _is_pg(conn)
    row = conn.execute(
        update(_T)
        .where(_T.c.name == name, _T.c.holder == holder, _T.c.fencing_token == token)
        .values(renewed_at=_now(pg), expires_at=_later(pg, ttl))
        .returning(_T.c.fencing_token)
    ).one_or_none()
    return row is not None


def release_lease(conn: Connection, holder: str, token: int, name: str = LEASE_NAME) -> bool:
    """Expire the lease now (``expires_at == renewed_at`` marks it released, so the next
    holder knows there is no paused process to fence off)."""
    pg = _is_pg(conn)
    now = _now(pg)
    row = conn.execute(
        update(_T)
        .where(_T.c.name == name, _T.c.holder == holder, _T.c.fencing_token == token)
        .values(renewed_at=now, expires_at=now)
        .returning(_T.c.fencing_token)
    ).one_or_none()
    return row is not None


def fence_token(session: Session, holder: str, name: str = LEASE_NAME) -> int | None:
    """The token of the lease if ``holder`` holds it, row-locked FOR SHARE (PostgreSQL)
    until the session's transaction ends: a takeover's UPDATE waits for that commit."""
    stmt = (
        select(_T.c.fencing_token)
        .where(_T.c.name == name, _T.c.holder == holder)
        .with_for_update(read=True)
    )
    return session.execute(stmt).scalar_one_or_none()


# -- fencing the scheduler's sessions ----------------------------------------------------------

_WROTE = "ketch.lease.wrote"


def install_fence(sessions: sessionmaker[Session], check: Callable[[Session], None]) -> None:
    """Call ``check(session)`` before every commit of a transaction that wrote something.

    Read-only transactions are not checked: they decide nothing, and on PostgreSQL the
    FOR SHARE row lock would turn each of them into a write transaction (an xid, a WAL
    record). The check runs before the ORM's final flush; its row lock is held through
    that flush to the commit, so the whole transaction is ordered before any takeover.
    """

    def note_execute(state: ORMExecuteState) -> None:
        if not state.is_select:
            state.session.info[_WROTE] = True

    def note_flush(session: Session, _ctx: Any) -> None:
        session.info[_WROTE] = True

    def before_commit(session: Session) -> None:
        if session.info.get(_WROTE) or session.new or session.dirty or session.deleted:
            check(session)

    def transaction_end(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:
            session.info.pop(_WROTE, None)

    event.listen(sessions, "do_orm_execute", note_execute)
    event.listen(sessions, "after_flush", note_flush)
    event.listen(sessions, "before_commit", before_commit)
    event.listen(sessions, "after_transaction_end", transaction_end)


# -- PostgreSQL connection settings of a scheduler process -------------------------------------


def tag_connections(engine: Engine, holder: str, settings: SchedulerSettings) -> None:
    """Name the process's PostgreSQL connections after the holder (so a new holder can
    terminate them) and bound how long a dead network can hang one (TCP keepalives and
    ``tcp_user_timeout`` at about the lease TTL). Existing pooled connections are dropped."""
    if engine.dialect.name != "postgresql":
        return
    ttl_ms = int(settings.lease_ttl * 1000)

    @event.listens_for(engine, "do_connect")
    def _connect_params(_dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["application_name"] = application_name(holder)
        cparams.setdefault("keepalives", 1)
        cparams.setdefault("keepalives_idle", max(1, int(settings.lease_ttl / 3)))
        cparams.setdefault("keepalives_interval", 1)
        cparams.setdefault("keepalives_count", 3)
        if _libpq_version() >= 120000:  # libpq 12 added it
            cparams.setdefault("tcp_user_timeout", max(1000, ttl_ms))

    engine.dispose()


def _libpq_version() -> int:
    try:
        import psycopg

        return int(psycopg.pq.version())
    except Exception:  # another driver: leave its settings alone
        return 0


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", None), "sqlstate", None)


# -- SQLite: one scheduler per database file ---------------------------------------------------


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


# -- the lease of one scheduler process --------------------------------------------------------


class _Link:
    """A dedicated connection of the lease. On PostgreSQL it also holds the holder's
    session-level advisory lock once :meth:`take_key` succeeded: a candidate that is
    granted that lock knows this connection is gone (the process died, its socket closed).
    Used by one thread at a time."""

    def __init__(self, engine: Engine, holder: str) -> None:
        self.engine = engine
        self.holder = holder
        self.pg = engine.dialect.name == "postgresql"
        self._conn: Connection | None = None
        self.has_key = False

    def connection(self) -> Connection:
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self.drop()
            self._conn = self.engine.connect()
        return self._conn

    def take_key(self) -> bool:
        """Take our advisory lock if we do not hold it; one try (a candidate probing it
        lets go at once)."""
        if not self.pg or self.has_key:
            return True
        conn = self.connection()
        key = (_ADVISORY_NAMESPACE, func.hashtext(self.holder))
        self.has_key = bool(conn.execute(select(func.pg_try_advisory_lock(*key))).scalar_one())
        conn.commit()
        return self.has_key

    def drop(self) -> None:
        """Close the connection; the server ends its session and our advisory lock."""
        conn, self._conn = self._conn, None
        self.has_key = False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()


@dataclass
class _Term:
    """One stretch of leadership: its token, and the threads keeping it."""

    token: int
    valid_until: float  # monotonic; the lease surely has not expired before this
    link: _Link
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lost_reason: str | None = None
    release: bool = False


class SchedulerLease:
    """A scheduler process's lease: :meth:`acquire` waits as a standby until it holds it;
    then a keeper thread renews it (and a watchdog declares it lost when no renewal got
    through in time) until :meth:`release`, or until it is lost — ``on_lost(reason)`` is
    called once, from whichever thread noticed. One object per process; it may acquire
    again after a loss (a new term, a new token).
    """

    def __init__(
        self,
        engine: Engine,
        settings: SchedulerSettings,
        *,
        holder: str | None = None,
        name: str = LEASE_NAME,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.holder = holder or new_holder_id()
        self.name = name
        self.pg = engine.dialect.name == "postgresql"
        self.on_lost: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._term: _Term | None = None
        self._link: _Link | None = None  # the standby's connection between terms
        self._sqlite_lock: SqliteSchedulerLock | None = None
        self._last_seen_holder: str | None = None
        self._terminate_warned = False
        self._outage = OutageTracker(log, "database (scheduler lease)")

    # -- state ------------------------------------------------------------------------------

    @property
    def token(self) -> int | None:
        return self._term.token if self._term is not None else None

    @property
    def held(self) -> bool:
        return self._term is not None and self._term.lost_reason is None

    @property
    def lost_reason(self) -> str | None:
        return self._term.lost_reason if self._term is not None else None

    def _lose(self, term: _Term, reason: str) -> None:
        with self._lock:
            if term.lost_reason is not None:
                return
            term.lost_reason = reason
        term.stop.set()
        log.error(
            "lost the scheduler lease (token %d): %s; stopping scheduling", term.token, reason
        )
        if self.on_lost is not None and term is self._term:
            self.on_lost(reason)

    # -- the fence ------------------------------------------------------------------------------

    def fence(self) -> Callable[[Session], None]:
        """The commit check of the current term (see :func:`install_fence`): raises
        :class:`LeaseLost` unless the lease still names this holder with this term's token;
        the row stays share-locked (PostgreSQL) until the transaction ends."""
        term = self._term
        if term is None:
            raise LeaseLost("this scheduler does not hold the lease")

        def check(session: Session) -> None:
            if term.lost_reason is not None:
                raise LeaseLost(term.lost_reason)
            if self.pg and time.monotonic() >= term.valid_until:
                self._lose(term, "the lease may have expired: no renewal got through in time")
                raise LeaseLost(term.lost_reason)
            current = fence_token(session, self.holder, self.name)
            if current != term.token:
                self._lose(term, f"another scheduler took over (token {term.token} is stale)")
                raise LeaseLost(term.lost_reason)

        return check

    # -- standby ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """SQLite: take the file lock now (:class:`AnotherScheduler` if another process
        has it), so a second scheduler fails at start, before it serves anything."""
        path = None if self.pg else sqlite_database_path(self.engine)
        if path is not None and self._sqlite_lock is None:
            lock = SqliteSchedulerLock(path)
            lock.acquire()
            self._sqlite_lock = lock

    def acquire(self, stop: threading.Event) -> bool:
        """Wait as a standby until this process holds the lease (True) or ``stop`` is set.

        SQLite: no waiting; :class:`AnotherScheduler` if another process holds the file lock.
        """
        self._end_term()
        if not self.pg:
            return self._acquire_sqlite()
        while not stop.is_set():
            link = self._link = self._link or _Link(self.engine, self.holder)
            try:
                token, sent = self._try_acquire(link)
            except DBAPIError as exc:
                # Probe often (a returning database is used within a second), log once.
                self._outage.failed(exc)
                link.drop()
                stop.wait(_OUTAGE_PROBE_SECONDS)
                continue
            self._outage.succeeded()
            if token is not None:
                self._start_term(token, sent, link)
                return True
        return False

    def _acquire_sqlite(self) -> bool:
        self.prepare()
        link = _Link(self.engine, self.holder)
        conn = link.connection()
        sent = time.monotonic()
        try:
            # Holding the file lock proves any previous holder is gone: take the row.
            seen = read_lease(conn, self.name)
            if seen is None:
                token = insert_lease(conn, self.holder, self.settings.lease_ttl, self.name)
            else:
                token = take_lease(
                    conn, self.holder, self.settings.lease_ttl, seen.token, require_expired=False
                )
            if token is None:
                raise RuntimeError("the scheduler_lease row changed under the SQLite file lock")
            conn.commit()
        except BaseException:
            link.drop()
            raise
        self._log_granted(token, seen.holder if seen else None)
        self._start_term(token, sent, link)
        return True

    def _try_acquire(self, link: _Link) -> tuple[int | None, float]:
        """One standby step: take the lease if it is free, else wait up to one poll
        interval for its holder's connection to go. Returns (token or None, the
        monotonic time before the statement that took it)."""
        conn = link.connection()
        if not link.take_key():  # must be held before we can hold the lease
            time.sleep(0.05)
            return None, 0.0
        try:
            seen = read_lease(conn, self.name)
            if seen is None:
                sent = time.monotonic()
                token = insert_lease(conn, self.holder, self.settings.lease_ttl, self.name)
                conn.commit()
                if token is not None:
                    self._log_granted(token, None)
                return token, sent
            conn.rollback()
            dead = False
            if not (seen.released or seen.remaining <= 0 or seen.holder == self.holder):
                self._log_standby(seen.holder)
                dead = self._wait_for_holder_gone(conn, seen)
                if not dead:
                    return None, 0.0
            return self._take(conn, seen, dead=dead)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise

    def _log_standby(self, holder: str) -> None:
        if holder != self._last_seen_holder:
            self._last_seen_holder = holder
            log.info("standby: scheduler %s is active; waiting", holder)

    def _wait_for_holder_gone(self, conn: Connection, seen: LeaseView) -> bool:
        """Block on the holder's advisory lock until its connection closes (True), or at
        most a poll interval, or until the lease expires (False)."""
        wait = min(self.settings.standby_poll_interval, max(seen.remaining, 0.0) + 0.02)
        _set_local(conn, "lock_timeout", f"{max(10, int(wait * 1000))}ms")
        key = (_ADVISORY_NAMESPACE, func.hashtext(seen.holder))
        try:
            conn.execute(select(func.pg_advisory_lock(*key)))
        except DBAPIError as exc:
            if _sqlstate(exc) != _LOCK_NOT_AVAILABLE:
                raise
            conn.rollback()
            return False
        conn.execute(select(func.pg_advisory_unlock(*key)))
        conn.commit()
        log.info("standby: the database session of scheduler %s is gone", seen.holder)
        return True

    def _take(self, conn: Connection, seen: LeaseView, *, dead: bool) -> tuple[int | None, float]:
        """Compare-and-set on the token seen. Our own lease (a term that ended: its stack
        has stopped) and a dead holder's need not have expired."""
        own = seen.holder == self.holder
        _set_local(conn, "lock_timeout", f"{_TAKEOVER_LOCK_TIMEOUT_MS}ms")
        sent = time.monotonic()
        try:
            token = take_lease(
                conn,
                self.holder,
                self.settings.lease_ttl,
                seen.token,
                require_expired=not (dead or own),
            )
        except DBAPIError as exc:
            if _sqlstate(exc) != _LOCK_NOT_AVAILABLE:
                raise
            # A transaction of the old holder holds the row: it is paused or cut off
            # between its fence check and its commit. End its sessions, then retry.
            conn.rollback()
            log.warning("takeover: the lease row is locked by %s; ending its sessions", seen.holder)
            self._terminate(conn, seen.holder)
            return None, 0.0
        conn.commit()
        if token is None:
            return None, 0.0
        self._log_granted(token, seen.holder)
        if not (own or dead or seen.released):
            # The lease expired: its holder is paused or cut off, and may sit in a
            # transaction holding row locks the new leader needs. It can never commit
            # now; end its sessions. (A dead holder's sessions are gone or going, and a
            # holder that released is shutting down cleanly.)
            self._terminate(conn, seen.holder)
        return token, sent

    def _terminate(self, conn: Connection, holder: str) -> None:
        try:
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :app AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                ),
                {"app": application_name(holder)},
            ).scalar_one()
            conn.commit()
        except DBAPIError as exc:
            conn.rollback()
            if not self._terminate_warned:
                self._terminate_warned = True
                log.warning(
                    "cannot end the database sessions of scheduler %s (%s): a paused one can "
                    "delay a takeover until it resumes (run schedulers as one database role, "
                    "or grant pg_signal_backend)",
                    holder,
                    _short(exc),
                )
            return
        if ended:
            log.info("ended %d database session(s) of scheduler %s", ended, holder)

    def _log_granted(self, token: int, previous: str | None) -> None:
        self._last_seen_holder = None
        after = f", after {previous}" if previous and previous != self.holder else ""
        log.info("acquired the scheduler lease as %s (token %d%s)", self.holder, token, after)

    # -- keeping it ------------------------------------------------------------------------------

    def _start_term(self, token: int, sent: float, link: _Link) -> None:
        """The link (with its advisory lock) now belongs to the term's keeper thread."""
        self._link = None
        term = _Term(token=token, valid_until=sent + self.settings.lease_ttl, link=link)
        term.threads.append(
            threading.Thread(target=self._keep, args=(term,), name="ketch-lease", daemon=True)
        )
        if self.pg:
            term.threads.append(
                threading.Thread(
                    target=self._watch, args=(term,), name="ketch-lease-watchdog", daemon=True
                )
            )
        self._term = term
        for thread in term.threads:
            thread.start()

    def _end_term(self, *, release: bool = False, join: float = 3.0) -> None:
        term = self._term
        if term is None:
            return
        term.release = release and term.lost_reason is None
        term.stop.set()
        for thread in term.threads:
            thread.join(join)
        with self._lock:
            if term.lost_reason is None:
                term.lost_reason = "released" if release else "the term ended"

    def _keep(self, term: _Term) -> None:
        """Renew every ``lease_renew_interval`` (after an error: reconnect, re-take our
        advisory lock, retry sooner). At the end of the term: release if asked, then close
        the connection (which lets go of the advisory lock)."""
        interval = self.settings.lease_renew_interval
        try:
            while not term.stop.wait(interval):
                sent = time.monotonic()
                try:
                    conn = term.link.connection()
                    term.link.take_key()
                    renewed = renew_lease(
                        conn, self.holder, term.token, self.settings.lease_ttl, self.name
                    )
                    conn.commit()
                except Exception as exc:
                    self._outage.failed(f"cannot renew the scheduler lease: {_short(exc)}")
                    term.link.drop()
                    interval = min(self.settings.lease_renew_interval, 0.5)
                    continue
                interval = self.settings.lease_renew_interval
                self._outage.succeeded()
                if not renewed:
                    self._lose(term, "another scheduler took over the lease")
                    return
                term.valid_until = max(term.valid_until, sent + self.settings.lease_ttl)
            if term.release:
                self._release_row(term)
        finally:
            term.link.drop()

    def _release_row(self, term: _Term) -> None:
        try:
            conn = term.link.connection()
            released = release_lease(conn, self.holder, term.token, self.name)
            conn.commit()
        except Exception as exc:
            log.warning("cannot release the scheduler lease (%s); it will expire", _short(exc))
            return
        if released:
            log.info("released the scheduler lease (token %d)", term.token)

    def _watch(self, term: _Term) -> None:
        """Stop scheduling once the lease may have expired without a renewal: from that
        moment a standby may own it, whatever this process believes."""
        while not term.stop.is_set():
            left = term.valid_until - time.monotonic()
            if left <= 0:
                ttl = self.settings.lease_ttl
                self._lose(term, f"no renewal got through within lease_ttl ({ttl:g} s)")
                return
            term.stop.wait(min(left, 0.25))

    # -- giving it up --------------------------------------------------------------------------

    def release(self) -> None:
        """Give the lease up (shutdown): a standby takes over at once. Then :meth:`close`."""
        self._end_term(release=True)
        self.close()

    def close(self) -> None:
        self._end_term(join=0.5)
        if self._link is not None:
            self._link.drop()
            self._link = None
        if self._sqlite_lock is not None:
            self._sqlite_lock.release()
            self._sqlite_lock = None


def _set_local(conn: Connection, setting: str, value: str) -> None:
    conn.execute(select(func.set_config(setting, value, True)))


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__
