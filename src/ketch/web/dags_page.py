"""``GET /dags``: the DAGs list (search, tag filter, pause, schedule, next run, the
states of the last runs) and the banner of DAG files that failed to import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import HTMLResponse

from ketch import operations
from ketch.db.models import DagModel, DagRun
from ketch.web import access
from ketch.web.common import PrincipalDep, SessionDep, page
from ketch.web.format import ImportProblem, import_problem

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
RECENT_RUNS = 5


@dataclass(frozen=True, slots=True)
class DagRow:
    dag: DagModel
    recent_runs: list[DagRun]  # newest first
    may_pause: bool


def import_problems(session: Session, limit: int = 100) -> tuple[list[ImportProblem], int]:
    found = operations.list_import_errors(session, limit=limit)
    return [import_problem(e.filename, e.stacktrace) for e in found.items], found.total_entries


@router.get("/dags", response_class=HTMLResponse)
def dags(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    search: Annotated[str, Query(max_length=250)] = "",
    tag: Annotated[list[str] | None, Query()] = None,
    status: Annotated[str, Query(pattern="^(all|active|paused)$")] = "all",
    page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    paused = {"all": None, "active": False, "paused": True}[status]
    every = operations.list_dag_models(session)
    all_tags = sorted({t for d in every for t in (d.tags or [])})
    # The filters of list_dags (paused; any of the tags), applied to the one list read.
    wanted = set(tag or ())
    needle = search.strip().lower()
    chosen = [
        d
        for d in every
        if (paused is None or d.is_paused == paused)
        and (not wanted or wanted.intersection(d.tags or ()))
        and needle in d.dag_id.lower()
    ]
    start = (page_number - 1) * PAGE_SIZE
    shown = chosen[start : start + PAGE_SIZE]
    runs = operations.recent_runs(session, [d.dag_id for d in shown], RECENT_RUNS)
    rows = [DagRow(d, runs[d.dag_id], access.may_pause(principal, d.dag_id)) for d in shown]
    problems, problem_count = import_problems(session)
    pages = max(1, -(-len(chosen) // PAGE_SIZE))

    def page_url(number: int) -> str | None:
        if not 1 <= number <= pages or number == page_number:
            return None
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]
        return "/dags?" + urlencode([*query, ("page", str(number))])

    return page(
        request,
        principal,
        "dags.html",
        {
            "title": "DAGs",
            "rows": rows,
            "total": len(chosen),
            "dag_count": len(every),
            "all_tags": all_tags,
            "chosen_tags": set(tag or ()),
            "search": search,
            "status": status,
            "page_number": page_number,
            "pages": pages,
            "prev_url": page_url(page_number - 1),
            "next_url": page_url(page_number + 1),
            "problems": problems,
            "problem_count": problem_count,
            "recent_runs": RECENT_RUNS,
        },
    )
