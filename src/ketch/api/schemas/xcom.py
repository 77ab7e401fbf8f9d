"""XCom entries (``.../taskInstances/{task_id}/xcomEntries``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from ketch.operations.xcom import XComEntry


class XComResponse(BaseModel):
    """Airflow's XCom entry without its value (the list's items). ketch has no display
    names: they are the ids, Airflow's default. ``map_index`` is -1 for an unmapped task."""

    key: str
    timestamp: datetime
    logical_date: datetime | None
    map_index: int
    task_id: str
    dag_id: str
    run_id: str
    dag_display_name: str
    task_display_name: str

    @classmethod
    def fields_of(cls, entry: XComEntry) -> dict[str, Any]:
        return {
            "key": entry.key,
            "timestamp": entry.timestamp,
            "logical_date": entry.logical_date,
            "map_index": entry.map_index,
            "task_id": entry.task_id,
            "dag_id": entry.dag_id,
            "run_id": entry.run_id,
            "dag_display_name": entry.dag_id,
            "task_display_name": entry.task_id,
        }

    @classmethod
    def from_entry(cls, entry: XComEntry) -> XComResponse:
        return cls(**cls.fields_of(entry))


class XComResponseNative(XComResponse):
    """One entry with its value as stored: JSON, a tagged value in Airflow's serde form
    (``{"__classname__": "datetime.date", "__version__": 2, "__data__": "2026-03-01"}``)."""

    value: Any

    @classmethod
    def from_entry(cls, entry: XComEntry) -> XComResponseNative:
        return cls(**cls.fields_of(entry), value=entry.value)


class XComCollectionResponse(BaseModel):
    xcom_entries: list[XComResponse]
    total_entries: int
