"""DAG runs: list, trigger (POST), get, and mark state / cancel (PATCH)."""

from __future__ import annotations

from fastapi import APIRouter, status

from ketch import operations
from ketch.api.rest.common import Limit, Offset, SessionDep, error_responses
from ketch.api.schemas.dag_runs import (
    DagRunCollectionResponse,
    DagRunPatchBody,
    DagRunResponse,
    TriggerDagRunBody,
)

router = APIRouter(prefix="/dags/{dag_id}/dagRuns", tags=["DagRun"])


@router.get("", responses=error_responses(404))
def list_dag_runs(
    dag_id: str,
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
    state: str | None = None,
) -> DagRunCollectionResponse:
    page = operations.list_dag_runs(session, dag_id, state=state, limit=limit, offset=offset)
    return DagRunCollectionResponse(
        dag_runs=[DagRunResponse.from_model(r) for r in page.items],
        total_entries=page.total_entries,
    )


@router.post(
    "",
    status_code=status.HTTP_200_OK,
    responses=error_responses(400, 404, 409, _409="A run with that id or logical date exists"),
)
def trigger_dag_run(dag_id: str, body: TriggerDagRunBody, session: SessionDep) -> DagRunResponse:
    """Create a manual run (queued). 404 unknown DAG, 409 run exists, 422 invalid conf/params."""
    run = operations.trigger_dag(
        session, dag_id, conf=body.conf, logical_date=body.logical_date, run_id=body.dag_run_id
    )
    session.commit()
    return DagRunResponse.from_model(run)


@router.get("/{dag_run_id}", responses=error_responses(404))
def get_dag_run(dag_id: str, dag_run_id: str, session: SessionDep) -> DagRunResponse:
    return DagRunResponse.from_model(operations.get_dag_run(session, dag_id, dag_run_id))


@router.patch("/{dag_run_id}", responses=error_responses(400, 404))
def patch_dag_run(
    dag_id: str, dag_run_id: str, body: DagRunPatchBody, session: SessionDep
) -> DagRunResponse:
    """Mark the run success, failed (cancel: running tries fail, pending ones skip) or queued."""
    run = operations.set_dag_run_state(session, dag_id, dag_run_id, body.state)
    session.commit()
    return DagRunResponse.from_model(run)
