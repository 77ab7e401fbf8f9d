"""SchedulerLease: the lease as one scheduler process holds it, term after term.

The object ``standalone.SchedulerTerms`` uses: it waits as a standby (``standby``),
runs a term while it leads (``term``), hands the loop its fence (``fence``) and gives
the lease up at shutdown. It owns the state the parts share: the current term, the
holder id, the SQLite file lock and the outage log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch.config import SchedulerSettings
from ketch.db.outage import OutageTracker
from ketch.scheduler.lease.fence import LeaseLost, fence_token
from ketch.scheduler.lease.holder import new_holder_id
from ketch.scheduler.lease.sqlite_lock import SqliteSchedulerLock, sqlite_database_path
from ketch.scheduler.lease.standby import Candidate, Granted
from ketch.scheduler.lease.statements import LEASE_NAME
from ketch.scheduler.lease.term import Term

# One logger for the whole lease package: operators (and tests) follow it by this name.
log = logging.getLogger("ketch.scheduler.lease")


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
        self._term: Term | None = None
        self._sqlite_lock: SqliteSchedulerLock | None = None
        self._outage = OutageTracker(log, "database (scheduler lease)")
        self._candidate = Candidate(engine, settings, self.holder, name, self._outage)

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

    def _lose(self, term: Term, reason: str) -> None:
        if not term.mark_lost(reason):
            return
        term.stop.set()
        log.error(
            "lost the scheduler lease (token %d): %s; stopping scheduling", term.token, reason
        )
        if self.on_lost is not None and term is self._term:
            self.on_lost(reason)

    # -- the fence ------------------------------------------------------------------------------

    def fence(self) -> Callable[[Session], None]:
        """The commit check of the current term (see ``fence.install_fence``): raises
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
            self.prepare()
            self._start_term(self._candidate.take_sqlite())
            return True
        granted = self._candidate.wait(stop)
        if granted is None:
            return False
        self._start_term(granted)
        return True

    # -- keeping it ------------------------------------------------------------------------------

    def _start_term(self, granted: Granted) -> None:
        token, sent, link = granted
        term = Term(
            token,
            sent + self.settings.lease_ttl,
            link,
            holder=self.holder,
            name=self.name,
            settings=self.settings,
            outage=self._outage,
            lose=self._lose,
        )
        self._term = term
        term.start(watchdog=self.pg)

    def _end_term(self, *, release: bool = False, join: float = 3.0) -> None:
        if self._term is not None:
            self._term.end(release=release, join=join)

    # -- giving it up --------------------------------------------------------------------------

    def release(self) -> None:
        """Give the lease up (shutdown): a standby takes over at once. Then :meth:`close`."""
        self._end_term(release=True)
        self.close()

    def close(self) -> None:
        self._end_term(join=0.5)
        self._candidate.close()
        if self._sqlite_lock is not None:
            self._sqlite_lock.release()
            self._sqlite_lock = None
