"""Pools (``/api/v1/pools``): responses and the PUT body."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from ketch.api.schemas.common import StrictBody

if TYPE_CHECKING:
    from ketch.operations import PoolStats


class PoolResponse(BaseModel):
    """Airflow's pool fields: occupied = running + queued slots; open = slots - occupied
    (negative when the pool was shrunk below what runs in it)."""

    name: str
    slots: int
    description: str | None
    occupied_slots: int
    running_slots: int
    queued_slots: int
    scheduled_slots: int
    open_slots: int

    @classmethod
    def from_stats(cls, stats: PoolStats) -> PoolResponse:
        return cls(
            name=stats.name,
            slots=stats.pool.slots,
            description=stats.pool.description,
            occupied_slots=stats.occupied_slots,
            running_slots=stats.running_slots,
            queued_slots=stats.queued_slots,
            scheduled_slots=stats.scheduled_slots,
            open_slots=stats.open_slots,
        )


class PoolCollectionResponse(BaseModel):
    pools: list[PoolResponse]
    total_entries: int


class PoolPutBody(StrictBody):
    """Create or update a pool; no ``description`` keeps the current one."""

    slots: int = Field(
        ge=0, le=2**31 - 1, description="Number of slots (0 stops new tasks in the pool)."
    )
    description: str | None = None
