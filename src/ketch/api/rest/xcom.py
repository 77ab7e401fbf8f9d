"""A task instance's XCom entries (its return value, a branch's choice), read-only.

Airflow 3's routes and shapes (``routes/public/xcom.py``): the list is paged and carries
no values, ``~`` in a path means any DAG, run or task; an entry carries its value as
stored. Readers need ``viewer``, as every GET (``ketch.auth.policy``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ketch.api.rest.common import Limit, Offset, SessionDep, error_responses
from ketch.api.schemas.xcom import XComCollectionResponse, XComResponse, XComResponseNative
from ketch.operations import xcom

router = APIRouter(
    prefix="/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries",
    tags=["XCom"],
)

MapIndex = Annotated[int, Query(ge=-1, le=2**31 - 1)]


@router.get("")
def list_xcom_entries(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    session: SessionDep,
    xcom_key: str | None = None,
    map_index: MapIndex | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> XComCollectionResponse:
    """The entries, without values (an unknown run or task has none, as in Airflow)."""
    page = xcom.list_xcom_entries(
        session,
        dag_id,
        dag_run_id,
        task_id,
        key=xcom_key,
        map_index=map_index,
        limit=limit,
        offset=offset,
    )
    return XComCollectionResponse(
        xcom_entries=[XComResponse.from_entry(e) for e in page.items],
        total_entries=page.total_entries,
    )


@router.get("/{xcom_key}", responses=error_responses(404))
def get_xcom_entry(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    xcom_key: str,
    session: SessionDep,
    map_index: MapIndex = -1,
) -> XComResponseNative:
    """One entry with its value (``return_value``: what the task returned)."""
    entry = xcom.get_xcom_entry(session, dag_id, dag_run_id, task_id, xcom_key, map_index=map_index)
    return XComResponseNative.from_entry(entry)
