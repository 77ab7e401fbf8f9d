"""Fencing: a scheduler that lost the lease cannot commit a single decision.

Installed as SQLAlchemy session events on the sessionmaker every scheduling step uses:
before the commit of a transaction that wrote something, the check reads the lease's
fencing token ``FOR SHARE``; a token that is not this term's raises :class:`LeaseLost`.
The row lock is held to the commit, so a takeover's UPDATE waits for every transaction
that passed its check, and every check after the takeover fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker

from ketch.scheduler.lease.statements import LEASE_NAME, LEASE_TABLE

_WROTE = "ketch.lease.wrote"
_T = LEASE_TABLE


class LeaseLost(BaseException):
    """This process is not (or can no longer know it is) the active scheduler.

    A ``BaseException`` on purpose: the scheduling loop catches ``Exception`` so that one
    failing step never kills it; losing the lease must end the loop, never be retried.
    """


def fence_token(session: Session, holder: str, name: str = LEASE_NAME) -> int | None:
    """The token of the lease if ``holder`` holds it, row-locked FOR SHARE (PostgreSQL)
    until the session's transaction ends: a takeover's UPDATE waits for that commit."""
    stmt = (
        select(_T.c.fencing_token)
        .where(_T.c.name == name, _T.c.holder == holder)
        .with_for_update(read=True)
    )
    return session.execute(stmt).scalar_one_or_none()


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
