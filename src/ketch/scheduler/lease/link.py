"""The lease's own database connection, and the holder's advisory lock on it.

A connection apart from the scheduler's pool, so renewing never waits behind scheduling
work. On PostgreSQL it holds a session-level advisory lock keyed on the holder id: a
standby granted that lock knows the holder's connection is gone (the process died).
"""

from __future__ import annotations

import contextlib

from sqlalchemy import Connection, Engine, func, select

# Namespace (first int4 key) of ketch's advisory locks; the second is hashtext(holder).
ADVISORY_NAMESPACE = 0x6B657463  # "ketc"


class LeaseLink:
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
        key = (ADVISORY_NAMESPACE, func.hashtext(self.holder))
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
