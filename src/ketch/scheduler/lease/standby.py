"""Waiting for the lease as a standby, and taking it over.

The acquisition side of the lease, apart from the keeping side (``term``): a standby
runs nothing but this loop on its lease connection. It takes the lease when it is free,
waits on the holder's advisory lock to learn at once that the holder died, and after
an expiry ends the old holder's sessions so a paused process can never commit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from ketch.config import SchedulerSettings
from ketch.db.outage import OutageTracker
from ketch.scheduler.lease.holder import application_name
from ketch.scheduler.lease.link import ADVISORY_NAMESPACE, LeaseLink
from ketch.scheduler.lease.statements import (
    LOCK_NOT_AVAILABLE,
    LeaseView,
    insert_lease,
    read_lease,
    set_local,
    short_error,
    sqlstate,
    take_lease,
)

# One logger for the whole lease package: operators (and tests) follow it by this name.
log = logging.getLogger("ketch.scheduler.lease")
# While the database is unavailable a standby (or a leader that lost it) probes this often.
_OUTAGE_PROBE_SECONDS = 0.5
_TAKEOVER_LOCK_TIMEOUT_MS = 1000

# A granted lease: its token, the monotonic time before the statement that took it, and
# the connection (holding the advisory lock) that now belongs to the term.
Granted = tuple[int, float, LeaseLink]


class Candidate:
    """A process waiting for the lease. Keeps its connection between attempts; hands it
    over with the lease (:meth:`wait`, :meth:`take_sqlite`)."""

    def __init__(
        self,
        engine: Engine,
        settings: SchedulerSettings,
        holder: str,
        name: str,
        outage: OutageTracker,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.holder = holder
        self.name = name
        self._outage = outage
        self._link: LeaseLink | None = None  # the standby's connection between terms
        self._last_seen_holder: str | None = None
        self._terminate_warned = False

    def wait(self, stop: threading.Event) -> Granted | None:
        """PostgreSQL: wait until this process holds the lease, or None once ``stop`` is set."""
        while not stop.is_set():
            link = self._link = self._link or LeaseLink(self.engine, self.holder)
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
                self._link = None
                return token, sent, link
        return None

    def take_sqlite(self) -> Granted:
        """SQLite, under the file lock: holding it proves any previous holder is gone."""
        link = LeaseLink(self.engine, self.holder)
        conn = link.connection()
        sent = time.monotonic()
        try:
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
        return token, sent, link

    def close(self) -> None:
        if self._link is not None:
            self._link.drop()
            self._link = None

    def _try_acquire(self, link: LeaseLink) -> tuple[int | None, float]:
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
        set_local(conn, "lock_timeout", f"{max(10, int(wait * 1000))}ms")
        key = (ADVISORY_NAMESPACE, func.hashtext(seen.holder))
        try:
            conn.execute(select(func.pg_advisory_lock(*key)))
        except DBAPIError as exc:
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
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
        set_local(conn, "lock_timeout", f"{_TAKEOVER_LOCK_TIMEOUT_MS}ms")
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
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
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
                    short_error(exc),
                )
            return
        if ended:
            log.info("ended %d database session(s) of scheduler %s", ended, holder)

    def _log_granted(self, token: int, previous: str | None) -> None:
        self._last_seen_holder = None
        after = f", after {previous}" if previous and previous != self.holder else ""
        log.info("acquired the scheduler lease as %s (token %d%s)", self.holder, token, after)
