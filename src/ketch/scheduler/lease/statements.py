"""The SQL on the ``scheduler_lease`` row, for PostgreSQL and SQLite.

Kept apart from the threads that run it so each statement can be read (and tested) on
its own: every time is the database clock's on PostgreSQL (``statement_timestamp()``),
Python's on SQLite (one host, so there is no skew to guard against). Also the small
helpers on the statements' errors that the standby and the keeper share.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, DateTime, Table, extract, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from ketch.db.models import SchedulerLease as LeaseRow
from ketch.db.models import UtcDateTime

LEASE_NAME = "scheduler"
LOCK_NOT_AVAILABLE = "55P03"
LEASE_TABLE = cast(Table, LeaseRow.__table__)
_T = LEASE_TABLE


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


def set_local(conn: Connection, setting: str, value: str) -> None:
    """A PostgreSQL setting for the current transaction only (``SET LOCAL``)."""
    conn.execute(select(func.set_config(setting, value, True)))


def sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", None), "sqlstate", None)


def short_error(exc: BaseException) -> str:
    """The first line of the driver's message, for a log line."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__
