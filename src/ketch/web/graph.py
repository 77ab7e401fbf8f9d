"""``GET /dags/{dag_id}/graph[?run_id=]``: the DAG's tasks, dependencies and task groups
as an SVG drawn on the server (:mod:`ketch.web.graph_layout`), each task coloured by its
state in one run (default: the latest). The same tasks are also listed in a table for
screen readers and keyboards (the SVG is one image to them).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse

from ketch import operations
from ketch.web.common import PrincipalDep, SessionDep, not_found, page
from ketch.web.graph_layout import NODE_HEIGHT, NODE_WIDTH, columns_of, layout
from ketch.web.grid import run_cells

__all__ = ["NODE_HEIGHT", "NODE_WIDTH", "columns_of", "layout", "router"]

router = APIRouter(include_in_schema=False)


@router.get("/dags/{dag_id}/graph", response_class=HTMLResponse)
def graph_page(
    request: Request,
    dag_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    run_id: Annotated[str | None, Query(max_length=250)] = None,
) -> HTMLResponse:
    try:
        dag = operations.get_dag(session, dag_id)
        if run_id is None:
            latest = operations.list_dag_runs(session, dag_id, limit=1).items
            run = latest[0] if latest else None
        else:
            run = operations.get_dag_run(session, dag_id, run_id)
    except operations.NotFound as exc:
        return not_found(request, principal, str(exc))
    # A run is drawn as it was created (its DAG version), the DAG without one as it is now.
    serialized = (
        operations.serialized_dag_for_run(session, run)
        if run is not None
        else operations.serialized_dag(dag)
    )
    cells = run_cells(session, [run.id]) if run is not None else {}
    states = {task_id: cell.state for (_pk, task_id), cell in cells.items()}
    return page(
        request,
        principal,
        "graph.html",
        {
            "title": f"{dag_id} · graph",
            "dag": dag,
            "run": run,
            "graph": layout(serialized),
            "states": states,
            "node_width": NODE_WIDTH,
            "node_height": NODE_HEIGHT,
        },
    )
