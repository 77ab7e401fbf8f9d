"""XCom entries (return values, a branch's choice) of task instances, for reading.

Mirrors Airflow 3's ``GET .../taskInstances/{task_id}/xcomEntries`` and
``.../xcomEntries/{xcom_key}``: the list has no values, ``~`` for the DAG, run or task
means any, and a missing run gives an empty list; an entry carries the value as stored
(for a tagged value, :mod:`ketch.worker.serde`'s JSON, as Airflow's raw value). An
instance of a mapped task has its own entries, by ``map_index`` (-1: not mapped).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ketch.db.models import DagRun, XCom
from ketch.operations._common import Page
from ketch.operations.errors import NotFound
from ketch.operations.runs import get_dag_run

ANY = "~"
RETURN_VALUE_KEY = "return_value"
UNMAPPED = -1


class XComNotFound(NotFound):
    def __init__(self, key: str, task_id: str, run_id: str) -> None:
        super().__init__(
            f"XCom entry with key {key!r} of task {task_id!r} in run {run_id!r} not found"
        )


@dataclass(frozen=True, slots=True)
class XComEntry:
    """One XCom row with the ids of its run (what the REST response shows)."""

    key: str
    value: Any
    timestamp: datetime
    logical_date: datetime | None
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = UNMAPPED


def _select() -> Any:
    return select(XCom, DagRun.dag_id, DagRun.run_id, DagRun.logical_date).join(
        DagRun, DagRun.id == XCom.dag_run_id
    )


def _entry(row: Any) -> XComEntry:
    xcom = row[0]
    return XComEntry(
        key=xcom.key,
        value=xcom.value,
        timestamp=xcom.timestamp,
        logical_date=row.logical_date,
        dag_id=row.dag_id,
        run_id=row.run_id,
        task_id=xcom.task_id,
        map_index=xcom.map_index,
    )


def list_xcom_entries(
    session: Session,
    dag_id: str,
    run_id: str,
    task_id: str,
    *,
    key: str | None = None,
    map_index: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[XComEntry]:
    """One page of entries, ordered as Airflow orders them (DAG, task, run, key)."""
    query = _select()
    if dag_id != ANY:
        query = query.where(DagRun.dag_id == dag_id)
    if run_id != ANY:
        query = query.where(DagRun.run_id == run_id)
    if task_id != ANY:
        query = query.where(XCom.task_id == task_id)
    if key is not None:
        query = query.where(XCom.key == key)
    if map_index is not None:
        query = query.where(XCom.map_index == map_index)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    query = query.order_by(DagRun.dag_id, XCom.task_id, DagRun.run_id, XCom.key, XCom.map_index)
    rows = session.execute(query.limit(limit).offset(offset)).all()
    return Page([_entry(r) for r in rows], total)


def get_xcom_entry(
    session: Session,
    dag_id: str,
    run_id: str,
    task_id: str,
    key: str = RETURN_VALUE_KEY,
    *,
    map_index: int = UNMAPPED,
) -> XComEntry:
    """One entry with its value; :class:`NotFound` naming the DAG, the run or the entry."""
    run = get_dag_run(session, dag_id, run_id)
    query = _select().where(
        XCom.dag_run_id == run.id,
        XCom.task_id == task_id,
        XCom.key == key,
        XCom.map_index == map_index,
    )
    row = session.execute(query).first()
    if row is None:
        raise XComNotFound(key, task_id, run_id)
    return _entry(row)
