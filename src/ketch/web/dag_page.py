"""``GET /dags/{dag_id}``: a DAG's details, the live grid of its runs, the trigger form
(from its params) and the pause toggle, the actions only for roles the API allows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse

from ketch import operations
from ketch.web import access
from ketch.web.common import PrincipalDep, SessionDep, not_found, page
from ketch.web.grid import DEFAULT_RUNS, MAX_RUNS, build_grid
from ketch.web.params_form import param_fields

router = APIRouter(include_in_schema=False)


@router.get("/dags/{dag_id}", response_class=HTMLResponse)
def dag_page(
    request: Request,
    dag_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    runs: Annotated[int, Query(ge=1, le=MAX_RUNS)] = DEFAULT_RUNS,
) -> HTMLResponse:
    try:
        dag = operations.get_dag(session, dag_id)
    except operations.NotFound as exc:
        return not_found(request, principal, str(exc))
    serialized = operations.serialized_dag(dag)
    return page(
        request,
        principal,
        "dag.html",
        {
            "title": dag.dag_id,
            "dag": dag,
            "serialized": serialized,
            "grid": build_grid(session, dag_id, serialized, runs),
            "runs_shown": runs,
            "fields": param_fields(serialized.params),
            "may_trigger": dag.is_active and access.may_trigger(principal, dag_id),
            "may_pause": access.may_pause(principal, dag_id),
            "api_dag": access.api_dag_path(dag_id),
        },
    )
