"""The grid of a DAG: columns are its last runs (oldest left, as Airflow draws them),
rows its tasks in DAG order, each cell a task instance's state linking to its try page.

``GET /dags/{dag_id}/grid`` is the fragment the DAG page polls (htmx, every 2 s while a
run is queued or running, every 10 s otherwise). The request names the version it shows
(``?since=``); when nothing changed the answer is an empty 204 and htmx swaps nothing, so
focus, scroll and screen readers are left alone between changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import HTMLResponse, Response

from ketch import operations
from ketch.db.models import DagRun, TaskInstance
from ketch.serialization import SerializedDag
from ketch.states import ACTIVE_RUN_STATES
from ketch.web.common import PrincipalDep, SessionDep, not_found, page

router = APIRouter(include_in_schema=False)

DEFAULT_RUNS = 25
MAX_RUNS = 100
LIVE_POLL = "every 2s"
IDLE_POLL = "every 10s"


@dataclass(frozen=True, slots=True)
class Cell:
    state: str | None
    instances: int = 1  # a mapped task's cell sums up its instances


# Which state a cell of several task instances (a mapped task) shows: the first of
# this list that any instance is in, Airflow 3's grid ``state_priority``.
STATE_PRIORITY: tuple[str | None, ...] = (
    "failed",
    "upstream_failed",
    "up_for_retry",
    "up_for_reschedule",
    "running",
    "restarting",
    "deferred",
    "awaiting_input",
    "queued",
    "scheduled",
    None,
    "success",
    "skipped",
    "removed",
)
_RANK = {state: rank for rank, state in enumerate(STATE_PRIORITY)}


def summed_up(states: list[str | None]) -> Cell:
    """One cell for the instances of a task in a run (one, or a mapped task's many)."""
    shown = min(states, key=lambda state: _RANK.get(state, len(_RANK)))
    return Cell(shown, len(states))


@dataclass(slots=True)
class Grid:
    dag_id: str
    runs: list[DagRun]  # oldest first
    task_ids: list[str]  # DAG order
    display_names: dict[str, str]
    cells: dict[tuple[int, str], Cell] = field(default_factory=dict)  # (run.id, task_id)
    live: bool = False
    version: str = ""

    @property
    def poll(self) -> str:
        return LIVE_POLL if self.live else IDLE_POLL

    def summary(self) -> str:
        """One sentence for the grid's live region: the latest run and how far it got."""
        if not self.runs:
            return "No runs yet."
        run = self.runs[-1]
        states = [self.cells[(run.id, t)].state for t in self.task_ids if (run.id, t) in self.cells]
        done = sum(1 for s in states if s in ("success", "failed", "skipped", "upstream_failed"))
        return f"Latest run {run.run_id}: {run.state}, {done} of {len(states)} tasks finished."


def run_cells(session: Session, run_pks: list[int]) -> dict[tuple[int, str], Cell]:
    """Every task's cell in these runs (by dag_run.id), from one query."""
    found: dict[tuple[int, str], list[str | None]] = {}
    for run_pk, task_id, state in session.execute(
        select(TaskInstance.dag_run_id, TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_run_id.in_(run_pks)
        )
    ):
        found.setdefault((run_pk, task_id), []).append(state)
    return {key: summed_up(states) for key, states in found.items()}


def build_grid(session: Session, dag_id: str, serialized: SerializedDag, limit: int) -> Grid:
    runs = list(reversed(operations.list_dag_runs(session, dag_id, limit=limit).items))
    task_ids = list(serialized.tasks)
    display = {t: serialized.tasks[t].task_display_name or t for t in task_ids}
    grid = Grid(dag_id, runs, task_ids, display)
    gone: set[str] = set()
    # The rows follow the DAG's current task order, without parsing each run's version.
    grid.cells = run_cells(session, [run.id for run in runs])
    for _run_pk, task_id in grid.cells:
        if task_id not in display:  # a task the DAG no longer has: still shown, last
            gone.add(task_id)
    for task_id in sorted(gone):
        grid.task_ids.append(task_id)
        display[task_id] = task_id
    grid.live = any(r.state in ACTIVE_RUN_STATES for r in runs)
    digest = hashlib.sha256()
    for run in runs:
        digest.update(f"{run.id}:{run.state}\n".encode())
    for (run_pk, task_id), cell in sorted(grid.cells.items()):
        digest.update(f"{run_pk}:{task_id}:{cell.state}:{cell.instances}\n".encode())
    digest.update("\n".join(grid.task_ids).encode())
    grid.version = digest.hexdigest()[:16]
    return grid


@router.get("/dags/{dag_id}/grid", response_class=HTMLResponse)
def grid_fragment(
    request: Request,
    dag_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    since: Annotated[str, Query(max_length=64)] = "",
    runs: Annotated[int, Query(ge=1, le=MAX_RUNS)] = DEFAULT_RUNS,
) -> Response:
    try:
        serialized = operations.serialized_dag(operations.get_dag(session, dag_id))
    except operations.NotFound as exc:
        return not_found(request, principal, str(exc))
    grid = build_grid(session, dag_id, serialized, runs)
    if since and since == grid.version:
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return page(request, principal, "_grid.html", {"grid": grid, "runs_shown": runs})
