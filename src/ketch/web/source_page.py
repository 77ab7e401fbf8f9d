"""``GET /dags/{dag_id}/source``: the DAG file's code with line numbers, read from the
database (``dag_code``) so a web server without the DAGs folder can show it. The text is
escaped by the template like every value: a DAG file is shown, never interpreted."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from ketch import operations
from ketch.web.common import PrincipalDep, SessionDep, not_found, page

router = APIRouter(include_in_schema=False)


@router.get("/dags/{dag_id}/source", response_class=HTMLResponse)
def source_page(
    request: Request, dag_id: str, principal: PrincipalDep, session: SessionDep
) -> HTMLResponse:
    try:
        dag = operations.get_dag(session, dag_id)
        source = operations.get_dag_source(session, dag_id)
    except operations.NotFound as exc:
        return not_found(request, principal, str(exc))
    return page(
        request,
        principal,
        "source.html",
        {
            "title": f"{dag_id} · source",
            "dag": dag,
            "source": source,
            "lines": source.content.splitlines() or [""],
        },
    )
