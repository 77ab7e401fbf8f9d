"""XComs through the execution API: ``GET /execution/try/xcom/{task_id}`` reads a value
another task of the same run stored, and :func:`put_xcom` is the one-row upsert a
finishing try's values are stored with (``finish``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import and_, select, true
from sqlalchemy.orm import Session

from ketch.api.execution.claims import ClaimsDep, SessionDep
from ketch.api.execution.liveness import ended, is_live
from ketch.db.models import TaskInstance, XCom
from ketch.scheduler.task_state import utcnow

router = APIRouter(prefix="/execution", tags=["execution"])

RETURN_VALUE_KEY = "return_value"
BRANCH_KEY = "__branch__"


@router.get("/try/xcom/{task_id}")
def get_xcom(
    task_id: str,
    claims: ClaimsDep,
    session: SessionDep,
    key: Annotated[str, Query()] = RETURN_VALUE_KEY,
    map_index: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    """A value another task of the same run stored (its return value by default); of a
    mapped task, the list of its instances' values in map_index order (Airflow's reduce),
    or with ``map_index`` the value of that instance (a task of the same mapped group).

    One query: the try's TI by primary key (is the try still live?) joined to the XComs.
    """
    rows = session.execute(
        select(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.state,
            TaskInstance.try_number,
            XCom.id.label("xcom_id"),
            XCom.value,
            XCom.map_index,
        )
        .select_from(TaskInstance)
        .outerjoin(
            XCom,
            and_(
                XCom.dag_run_id == TaskInstance.dag_run_id,
                XCom.task_id == task_id,
                XCom.key == key,
                true() if map_index is None else XCom.map_index == map_index,
            ),
        )
        .where(TaskInstance.id == claims.ti_id)
        .order_by(XCom.map_index)
    ).all()
    if not rows or not is_live(rows[0], claims):
        raise ended(rows[0] if rows else None, claims)
    found = [row for row in rows if row.xcom_id is not None]
    if not found:
        raise HTTPException(404, f"no XCom {key!r} of task {task_id!r} in run {claims.run_id!r}")
    if found[0].map_index < 0 or map_index is not None:
        return {"value": found[0].value}
    return {"value": [row.value for row in found]}


def put_xcom(
    session: Session, dag_run_id: int, task_id: str, map_index: int, key: str, value: Any
) -> None:
    """Insert or replace one XCom row in one statement (a retried try overwrites its
    predecessor's): an upsert on the (dag_run_id, task_id, key, map_index) unique constraint."""
    insert: Any
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(XCom).values(
        dag_run_id=dag_run_id,
        task_id=task_id,
        map_index=map_index,
        key=key,
        value=value,
        timestamp=utcnow(),
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[XCom.dag_run_id, XCom.task_id, XCom.key, XCom.map_index],
            set_={"value": stmt.excluded.value, "timestamp": stmt.excluded.timestamp},
        )
    )
