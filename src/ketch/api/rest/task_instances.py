"""Task instances of a run: list, get (with its tries), mark state, clear."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy.orm import Session

from ketch import operations
from ketch.api.rest.common import SessionDep, error_responses
from ketch.api.schemas.task_instances import (
    ClearTaskInstancesBody,
    PatchTaskInstanceBody,
    TaskInstanceCollectionResponse,
    TaskInstanceResponse,
)
from ketch.db.models import TaskInstance

router = APIRouter(prefix="/dags/{dag_id}", tags=["TaskInstance"])


def _collection(session: Session, tis: list[TaskInstance]) -> TaskInstanceCollectionResponse:
    """The TIs with their try history (``tries``), read for all of them in one query."""
    tries = operations.tries_by_task_instance(session, tis)
    return TaskInstanceCollectionResponse(
        task_instances=[TaskInstanceResponse.from_model(ti, tries[ti.id]) for ti in tis],
        total_entries=len(tis),
    )


@router.get("/dagRuns/{dag_run_id}/taskInstances", responses=error_responses(404))
def list_task_instances(
    dag_id: str, dag_run_id: str, session: SessionDep
) -> TaskInstanceCollectionResponse:
    return _collection(session, operations.list_task_instances(session, dag_id, dag_run_id))


@router.get("/dagRuns/{dag_run_id}/taskInstances/{task_id}", responses=error_responses(404))
def get_task_instance(
    dag_id: str, dag_run_id: str, task_id: str, session: SessionDep
) -> TaskInstanceResponse:
    ti = operations.get_task_instance(session, dag_id, dag_run_id, task_id)
    return TaskInstanceResponse.from_model(ti, operations.list_task_instance_tries(session, ti))


@router.get(
    "/dagRuns/{dag_run_id}/taskInstances/{task_id}/listMapped", responses=error_responses(404)
)
def list_mapped_task_instances(
    dag_id: str, dag_run_id: str, task_id: str, session: SessionDep
) -> TaskInstanceCollectionResponse:
    """The instances of a mapped task, in map_index order (Airflow's listMapped); 404 for
    a task that is not mapped."""
    tis = operations.list_mapped_task_instances(session, dag_id, dag_run_id, task_id)
    return _collection(session, tis)


# Included after the other routers: ``/taskInstances/{task_id}/xcomEntries`` must not be
# taken for a map_index.
mapped_router = APIRouter(prefix="/dags/{dag_id}", tags=["TaskInstance"])


@mapped_router.get(
    "/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index:int}", responses=error_responses(404)
)
def get_mapped_task_instance(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    map_index: Annotated[int, Path(ge=0)],
    session: SessionDep,
) -> TaskInstanceResponse:
    """One instance of a mapped task (Airflow's mapped task instance endpoint)."""
    ti = operations.get_task_instance(session, dag_id, dag_run_id, task_id, map_index)
    return TaskInstanceResponse.from_model(ti, operations.list_task_instance_tries(session, ti))


@router.patch("/dagRuns/{dag_run_id}/taskInstances/{task_id}", responses=error_responses(400, 404))
def patch_task_instance(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    body: PatchTaskInstanceBody,
    session: SessionDep,
) -> TaskInstanceCollectionResponse:
    """Set the state (of every instance of a mapped task); returns the task instances whose
    state changed (as Airflow 3)."""
    operations.check_task_instance(session, dag_id, dag_run_id, task_id, None)
    altered = operations.set_task_instance_state(
        session,
        dag_id,
        dag_run_id,
        task_id,
        body.new_state,
        include_downstream=body.include_downstream,
        include_upstream=body.include_upstream,
    )
    session.commit()
    return _collection(session, altered)


@router.post("/clearTaskInstances", responses=error_responses(400, 404))
def clear_task_instances(
    dag_id: str, body: ClearTaskInstancesBody, session: SessionDep
) -> TaskInstanceCollectionResponse:
    """Clear (rerun) task instances of one run; ``dry_run`` only lists them."""
    tis = operations.clear_task_instances(
        session,
        dag_id,
        body.dag_run_id,
        body.task_ids,
        include_downstream=body.include_downstream,
        include_upstream=body.include_upstream,
        only_failed=body.only_failed,
        dry_run=body.dry_run,
    )
    response = _collection(session, tis)
    if not body.dry_run:
        session.commit()
    return response


@mapped_router.patch(
    "/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index:int}",
    responses=error_responses(400, 404),
)
def patch_mapped_task_instance(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    map_index: Annotated[int, Path(ge=0)],
    body: PatchTaskInstanceBody,
    session: SessionDep,
) -> TaskInstanceCollectionResponse:
    """Set the state of one instance of a mapped task; returns the task instances whose
    state changed (Airflow 3's PATCH with a map_index)."""
    operations.get_task_instance(session, dag_id, dag_run_id, task_id, map_index)
    altered = operations.set_task_instance_state(
        session,
        dag_id,
        dag_run_id,
        task_id,
        body.new_state,
        include_downstream=body.include_downstream,
        include_upstream=body.include_upstream,
        map_index=map_index,
    )
    session.commit()
    return _collection(session, altered)
