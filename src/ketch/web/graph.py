"""``GET /dags/{dag_id}/graph[?run_id=]``: the DAG's tasks and dependencies as an SVG
drawn on the server, each task coloured by its state in one run (default: the latest).

Layout, left to right as Airflow draws it: a task's column is the length of the longest
path to it from a root, and the tasks of a column are ordered by the mean row of their
upstream tasks (one barycentre pass), which keeps most edges short and uncrossed. Done
here in a few lines instead of with a JavaScript graph library: no build step, and the
page works without scripts. The same tasks are also listed in a table for screen
readers and keyboards (the SVG is one image to them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse

from ketch import operations
from ketch.serialization import SerializedDag
from ketch.web.common import PrincipalDep, SessionDep, not_found, page
from ketch.web.grid import run_cells

router = APIRouter(include_in_schema=False)

NODE_WIDTH = 180
NODE_HEIGHT = 34
COLUMN_GAP = 70
ROW_GAP = 16
MARGIN = 10
LABEL_CHARS = 24  # longer ids are cut in the box (the whole id is its tooltip)


@dataclass(frozen=True, slots=True)
class Node:
    task_id: str
    label: str
    x: int
    y: int
    column: int


@dataclass(frozen=True, slots=True)
class Edge:
    upstream: str
    downstream: str
    path: str  # SVG path data


@dataclass(frozen=True, slots=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int


def columns_of(dag: SerializedDag) -> dict[str, int]:
    """Each task's column: the longest path from a root (tasks are in definition order,
    which need not be topological, so iterate to a fixed point over the acyclic graph)."""
    column = {task_id: 0 for task_id in dag.tasks}
    for _ in range(len(dag.tasks)):
        changed = False
        for task_id, task in dag.tasks.items():
            want = max((column[u] + 1 for u in task.upstream_task_ids if u in column), default=0)
            if want != column[task_id]:
                column[task_id], changed = want, True
        if not changed:
            break
    return column


def layout(dag: SerializedDag) -> Graph:
    column = columns_of(dag)
    by_column: dict[int, list[str]] = {}
    for task_id in dag.tasks:  # definition order within a column to start with
        by_column.setdefault(column[task_id], []).append(task_id)
    row: dict[str, float] = {}
    for col in sorted(by_column):
        tasks = by_column[col]
        if col:

            def barycentre(task_id: str, tasks: list[str] = tasks) -> float:
                ups = [row[u] for u in dag.tasks[task_id].upstream_task_ids if u in row]
                return sum(ups) / len(ups) if ups else float(tasks.index(task_id))

            tasks.sort(key=barycentre)
        for index, task_id in enumerate(tasks):
            row[task_id] = float(index)
    nodes = {
        task_id: Node(
            task_id,
            _label(dag.tasks[task_id].task_display_name or task_id),
            MARGIN + column[task_id] * (NODE_WIDTH + COLUMN_GAP),
            MARGIN + int(row[task_id]) * (NODE_HEIGHT + ROW_GAP),
            column[task_id],
        )
        for task_id in dag.tasks
    }
    edges = [
        Edge(up, task_id, _curve(nodes[up], nodes[task_id]))
        for task_id, task in dag.tasks.items()
        for up in task.upstream_task_ids
        if up in nodes
    ]
    width = MARGIN * 2 + (max(column.values(), default=0) + 1) * (NODE_WIDTH + COLUMN_GAP)
    rows = max((len(tasks) for tasks in by_column.values()), default=0)
    height = MARGIN * 2 + rows * (NODE_HEIGHT + ROW_GAP)
    return Graph(list(nodes.values()), edges, width - COLUMN_GAP, height)


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _curve(up: Node, down: Node) -> str:
    """A cubic Bézier from the right side of ``up`` to the left side of ``down``."""
    x1, y1 = up.x + NODE_WIDTH, up.y + NODE_HEIGHT // 2
    x2, y2 = down.x, down.y + NODE_HEIGHT // 2
    bend = max((x2 - x1) // 2, 20)
    return f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"


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
