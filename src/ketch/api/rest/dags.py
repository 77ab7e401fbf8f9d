"""DAGs: list, details (schedule, next run, params, tasks, task groups), pause/unpause, tasks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ketch import operations
from ketch.api.rest.common import Limit, Offset, SessionDep, error_responses
from ketch.api.schemas.dags import (
    DagCollectionResponse,
    DagDetailsResponse,
    DagPatchBody,
    DagResponse,
    TaskCollectionResponse,
    TaskResponse,
)

router = APIRouter(prefix="/dags", tags=["DAG"])


@router.get("")
def list_dags(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
    paused: bool | None = None,
    tags: Annotated[list[str] | None, Query(description="DAGs with any of these tags.")] = None,
) -> DagCollectionResponse:
    page = operations.list_dags(session, paused=paused, tags=tags, limit=limit, offset=offset)
    return DagCollectionResponse(
        dags=[DagResponse.from_model(s.dag, s.last_run) for s in page.items],
        total_entries=page.total_entries,
    )


@router.get("/{dag_id}", responses=error_responses(404))
def get_dag(dag_id: str, session: SessionDep) -> DagDetailsResponse:
    dag = operations.get_dag(session, dag_id)
    last_run = operations.list_dag_runs(session, dag_id, limit=1).items
    return DagDetailsResponse.from_serialized(
        dag, operations.serialized_dag(dag), last_run[0] if last_run else None
    )


@router.patch("/{dag_id}", responses=error_responses(400, 404))
def patch_dag(dag_id: str, body: DagPatchBody, session: SessionDep) -> DagResponse:
    dag = operations.set_paused(session, dag_id, body.is_paused)
    session.commit()
    return DagResponse.from_model(dag)


@router.get("/{dag_id}/tasks", responses=error_responses(404))
def list_tasks(dag_id: str, session: SessionDep) -> TaskCollectionResponse:
    serialized = operations.serialized_dag(operations.get_dag(session, dag_id))
    tasks = [TaskResponse.from_task(t, serialized) for t in serialized.tasks.values()]
    return TaskCollectionResponse(tasks=tasks, total_entries=len(tasks))
