"""``GET /dags/{dag_id}/runs/{run_id}``: one run's facts, conf and task instances, with
the run's actions (mark success / failed, clear) for roles the API allows.

The task instances are listed in the order of the DAG version the run was created
with, so the page reads like the grid's column for this run.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.responses import HTMLResponse

from ketch import operations
from ketch.db.models import DagRun, TaskInstance
from ketch.web import access
from ketch.web.common import PrincipalDep, SessionDep, not_found, page

router = APIRouter(include_in_schema=False)


@router.get("/dags/{dag_id}/runs/{run_id}", response_class=HTMLResponse)
def run_page(
    request: Request,
    dag_id: str,
    run_id: str,
    principal: PrincipalDep,
    session: SessionDep,
) -> HTMLResponse:
    try:
        run = operations.get_dag_run(session, dag_id, run_id)
    except operations.NotFound as exc:
        return not_found(request, principal, str(exc))
    tis = _in_dag_order(session, run, operations.list_task_instances(session, dag_id, run_id))
    return page(
        request,
        principal,
        "run.html",
        {
            "title": f"{run_id} · {dag_id}",
            "dag_id": dag_id,
            "run": run,
            "tis": tis,
            "conf": json.dumps(run.conf or {}, indent=2, sort_keys=True, default=str),
            "api_run": access.api_run_path(dag_id, run_id),
            "api_dag": access.api_dag_path(dag_id),
            "may_mark": access.may_mark_run(principal, dag_id, run_id),
            "may_clear": access.may_clear(principal, dag_id),
        },
    )


def _in_dag_order(session: Session, run: DagRun, tis: list[TaskInstance]) -> list[TaskInstance]:
    """The run's task instances in its DAG version's task order (unknown tasks last)."""
    tasks = operations.serialized_dag_for_run(session, run).tasks
    order = {task_id: index for index, task_id in enumerate(tasks)}
    return sorted(tis, key=lambda ti: (order.get(ti.task_id, len(order)), ti.task_id))
