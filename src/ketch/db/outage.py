"""Database outages: which errors mean "the database is unavailable", and quiet logging.

An outage is noisy by nature: every request of the web process and every step of the
scheduler fails the same way until the database is back. :class:`OutageTracker` turns
that into two lines: one WARNING with the reason when the outage begins, one INFO with
its length when the database answers again. Failures in between are logged at DEBUG.

:func:`is_db_unavailable` decides which errors are worth waiting out: the database
cannot be reached or dropped the connection (``OperationalError``, an invalidated
connection), or it answers but refuses writes (disk full, read-only, out of resources).
A mistake in a statement (no such table, a constraint violated) is not an outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError, OperationalError

# PostgreSQL SQLSTATE classes and codes that mean the server cannot do the work now:
# 08 connection exception, 53 insufficient resources (53100 disk full), 57 operator
# intervention (admin shutdown, cannot connect now), 58 system error (I/O error),
# 25006 read-only transaction (a standby, or default_transaction_read_only).
_PG_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_PG_UNAVAILABLE_CODES = ("25006",)
# SQLite primary result codes that are about the file, not the statement: BUSY, LOCKED,
# NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL. SQLITE_ERROR (1) is a mistake in
# the statement ("no such table", a syntax error).
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def is_db_unavailable(exc: BaseException) -> bool:
    """An error that means "the database cannot do this now", worth waiting out."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in _PG_UNAVAILABLE_CODES
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _SQLITE_UNAVAILABLE
    # No code: a failure to connect (PostgreSQL refused or timed out), or a driver
    # without codes. OperationalError is the DB-API's class for "not the statement's fault".
    return isinstance(exc, OperationalError)


def reason(exc: BaseException) -> str:
    """The first line of the driver's message (no SQL, no parameters, no traceback)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class OutageTracker:
    """One WARNING when an outage starts, one INFO when it ends; thread-safe.

    ``failed(exc)`` on every failure that :func:`is_db_unavailable` accepts,
    ``succeeded()`` whenever the database did what was asked. ``succeeded()`` costs one
    attribute read while there is no outage, so it can sit on a hot path.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str = "database",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0
        self.last_reason: str | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    @property
    def failures(self) -> int:
        """Failures seen in the current outage (0 when there is none)."""
        return self._failures

    def failed(self, exc: BaseException | str) -> bool:
        """Note a failure; True when it began a new outage (and was logged at WARNING)."""
        why = exc if isinstance(exc, str) else reason(exc)
        with self._lock:
            self.last_reason = why
            self._failures += 1
            if self._since is not None:
                self._log.debug("%s still unavailable: %s", self._what, why)
                return False
            self._since = self._clock()
        self._log.warning("%s unavailable: %s", self._what, why)
        return True

    def succeeded(self) -> float | None:
        """Note a success; the outage's length in seconds when this success ended one."""
        if self._since is None:  # the common case: no lock
            return None
        with self._lock:
            since, self._since = self._since, None
            failures, self._failures = self._failures, 0
        if since is None:
            return None  # another thread ended it
        seconds = self._clock() - since
        self._log.info(
            "%s reachable again after %.1fs (%d failed attempts)", self._what, seconds, failures
        )
        return seconds
