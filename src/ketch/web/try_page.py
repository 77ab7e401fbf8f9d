"""``GET /dags/{dag_id}/runs/{run_id}/tasks/{task_id}[?try=N]``: a task instance's tries
(state, start, end, duration, error) and the log viewer of one try (default: the latest).

The log viewer (``static/log_viewer.js``) reads the REST log API itself: it follows a
live try through its ``follow=true`` event stream and reads a finished one the same way
(the stream ends at once with the try's state).
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import HTMLResponse

from ketch import operations
from ketch.auth.principal import Principal
from ketch.db.models import TaskInstance
from ketch.web import access
from ketch.web.access import api_dag_path
from ketch.web.common import PrincipalDep, SessionDep, not_found, page

router = APIRouter(include_in_schema=False)

RETURN_VALUE_CHARS = 4000


@router.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", response_class=HTMLResponse)
def try_page(
    request: Request,
    dag_id: str,
    run_id: str,
    task_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    try_number: Annotated[int | None, Query(alias="try", ge=1, le=2**31 - 1)] = None,
    map_index: Annotated[int, Query(ge=-1, le=2**31 - 1)] = -1,
) -> HTMLResponse:
    if map_index < 0 and (mapped := _instances(session, dag_id, run_id, task_id)) is not None:
        return _instances_page(request, principal, session, dag_id, run_id, task_id, mapped)
    try:
        ti = operations.get_task_instance(session, dag_id, run_id, task_id, map_index)
    except operations.NotFound as exc:
        return not_found(request, principal, str(exc))
    tries = operations.list_task_instance_tries(session, ti)
    shown = try_number if try_number is not None else ti.try_number
    if shown > ti.try_number or (try_number is not None and shown < 1):
        message = f"task {task_id!r} of run {run_id!r} has no try {shown} (tries: {ti.try_number})"
        return not_found(request, principal, message)
    run = operations.get_dag_run(session, dag_id, run_id)
    log_url = None
    if shown >= 1:
        log_url = (
            f"{api_dag_path(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}"
            f"/logs/{shown}" + (f"?map_index={map_index}" if map_index >= 0 else "")
        )
    shown_try = next((t for t in tries if t.try_number == shown), None)
    api_ti = access.api_ti_path(dag_id, run_id, task_id)
    if map_index >= 0:
        api_ti += f"/{map_index}"
    return page(
        request,
        principal,
        "try.html",
        {
            "title": f"{task_id}{_suffix(map_index)} · {run_id}",
            "dag_id": dag_id,
            "run": run,
            "ti": ti,
            "map_index": map_index,
            "tries": tries,
            "shown": shown,
            "log_url": log_url,
            "return_value": _return_value(session, dag_id, run_id, task_id, map_index),
            "rendered_fields": _rendered(shown_try.rendered_fields if shown_try else None),
            "api_dag": access.api_dag_path(dag_id),
            # A mapped instance is marked on its own (PATCH .../{task_id}/{map_index}), and
            # cleared with its siblings (a clear names tasks).
            "api_ti": api_ti,
            "may_mark": access.may(principal, "PATCH", api_ti),
            "may_clear": access.may_clear(principal, dag_id),
        },
    )


def _suffix(map_index: int) -> str:
    return f" [{map_index}]" if map_index >= 0 else ""


def _instances(
    session: Session, dag_id: str, run_id: str, task_id: str
) -> list[TaskInstance] | None:
    """A mapped task's instances, or None for a task that is not mapped (or unknown)."""
    try:
        return operations.list_mapped_task_instances(session, dag_id, run_id, task_id)
    except operations.NotFound:
        return None


def _instances_page(
    request: Request,
    principal: Principal,
    session: Session,
    dag_id: str,
    run_id: str,
    task_id: str,
    instances: list[TaskInstance],
) -> HTMLResponse:
    """A mapped task named without its map_index: its instances, each linking to its page."""
    return page(
        request,
        principal,
        "mapped.html",
        {
            "title": f"{task_id} · {run_id}",
            "dag_id": dag_id,
            "run": operations.get_dag_run(session, dag_id, run_id),
            "task_id": task_id,
            "instances": instances,
        },
    )


def _return_value(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int
) -> str | None:
    """The task's return value as indented JSON, cut at ``RETURN_VALUE_CHARS`` (the whole
    value is in the XCom API); None when it returned nothing."""
    try:
        entry = operations.get_xcom_entry(session, dag_id, run_id, task_id, map_index=map_index)
    except operations.NotFound:
        return None
    if entry.value is None:  # returned None: Airflow pushes nothing then
        return None
    text = json.dumps(entry.value, indent=2, sort_keys=True, default=str)
    if len(text) > RETURN_VALUE_CHARS:
        return text[:RETURN_VALUE_CHARS] + "\n… (cut: the whole value is in the XCom API)"
    return text


def _rendered(fields: dict[str, Any] | None) -> dict[str, str]:
    """Each rendered field as text: strings as they are, anything else as JSON."""
    return {
        name: value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
        for name, value in (fields or {}).items()
    }


def _seg(value: str) -> str:
    return quote(value, safe="")
