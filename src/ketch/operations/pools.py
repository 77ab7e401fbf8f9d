"""Pools: list with their use, get, create or update, delete."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ketch.db.models import DEFAULT_POOL_NAME, Pool, TaskInstance
from ketch.operations._common import _notify_after_commit
from ketch.operations.errors import DefaultPoolNotDeletable, InvalidRequest, PoolNotFound
from ketch.states import TaskInstanceState

_POOL_NAME_MAX = 256  # slot_pool.pool is String(256), as Airflow's


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A pool with its use: slots taken by its queued and running task instances (the ones
    the scheduler counts against the pool), as Airflow's ``Pool.slots_stats``."""

    pool: Pool
    running_slots: int
    queued_slots: int
    scheduled_slots: int

    @property
    def name(self) -> str:
        return self.pool.pool

    @property
    def occupied_slots(self) -> int:
        return self.running_slots + self.queued_slots

    @property
    def open_slots(self) -> int:
        """Negative when the pool was shrunk below what is running (as in Airflow)."""
        return self.pool.slots - self.occupied_slots


def _pool_usage(session: Session, names: list[str] | None) -> dict[tuple[str, str | None], int]:
    """Sum of pool_slots per (pool, state) for the states that count."""
    counted = (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, TaskInstanceState.SCHEDULED)
    query = (
        select(TaskInstance.pool, TaskInstance.state, func.sum(TaskInstance.pool_slots))
        .where(TaskInstance.state.in_([s.value for s in counted]))
        .group_by(TaskInstance.pool, TaskInstance.state)
    )
    if names is not None:
        query = query.where(TaskInstance.pool.in_(names))
    return {(pool, state): int(n or 0) for pool, state, n in session.execute(query)}


def _pool_stats(pool: Pool, usage: dict[tuple[str, str | None], int]) -> PoolStats:
    def used(state: TaskInstanceState) -> int:
        return usage.get((pool.pool, state.value), 0)

    return PoolStats(
        pool=pool,
        running_slots=used(TaskInstanceState.RUNNING),
        queued_slots=used(TaskInstanceState.QUEUED),
        scheduled_slots=used(TaskInstanceState.SCHEDULED),
    )


def list_pools(session: Session) -> list[PoolStats]:
    """Every pool by name, with its occupied and open slots."""
    pools = list(session.scalars(select(Pool).order_by(Pool.pool)))
    usage = _pool_usage(session, None)
    return [_pool_stats(p, usage) for p in pools]


def get_pool(session: Session, name: str) -> PoolStats:
    pool = session.get(Pool, name)
    if pool is None:
        raise PoolNotFound(name)
    return _pool_stats(pool, _pool_usage(session, [name]))


def set_pool(session: Session, name: str, slots: int, description: str | None = None) -> PoolStats:
    """Create the pool or update its slots (Airflow's ``Pool.create_or_update_pool``).

    ``description`` None keeps the current one (none for a new pool). Lowering the
    slots below what is occupied stops nothing: no new task starts until slots free up.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("name", "a pool name must not be empty")
    if len(name) > _POOL_NAME_MAX:
        raise InvalidRequest("name", f"a pool name has at most {_POOL_NAME_MAX} characters")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
        raise InvalidRequest("slots", f"must be a whole number >= 0, not {slots!r}")
    pool = session.get(Pool, name)
    if pool is None:
        pool = Pool(pool=name, slots=slots, description=description)
        session.add(pool)
    else:
        pool.slots = slots
        if description is not None:
            pool.description = description
    session.flush()
    _notify_after_commit(session)  # more slots: the scheduler may queue tasks at once
    return _pool_stats(pool, _pool_usage(session, [name]))


def delete_pool(session: Session, name: str) -> None:
    """Delete a pool. Task instances still naming it fail when next scheduled
    ("pool does not exist"), as the scheduler treats any unknown pool."""
    if name == DEFAULT_POOL_NAME:
        raise DefaultPoolNotDeletable()
    pool = session.get(Pool, name)
    if pool is None:
        raise PoolNotFound(name)
    session.delete(pool)
    session.flush()
    _notify_after_commit(session)
