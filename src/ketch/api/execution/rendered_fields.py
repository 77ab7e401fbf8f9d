"""``PUT /execution/try/rendered-fields``: the running try's rendered template fields
(masked by the try), stored on its ``task_instance_try`` row for the UI and REST API."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update

from ketch.api.execution.claims import ClaimsDep, SessionDep
from ketch.api.execution.liveness import is_this_try, load_ti, refusal
from ketch.db.models import TaskInstance, TaskInstanceTry
from ketch.states import TaskInstanceState

router = APIRouter(prefix="/execution", tags=["execution"])


class RenderedFieldsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rendered_fields: dict[str, Any]


# A try's rendered fields are each truncated by the try (ketch.authoring.templating);
# this bounds what one request may store.
MAX_RENDERED_FIELDS_BYTES = 1024 * 1024


@router.put("/try/rendered-fields", status_code=204)
def put_rendered_fields(
    body: RenderedFieldsBody, claims: ClaimsDep, session: SessionDep
) -> Response:
    """Store the try's rendered template fields (masked by the try) on its history row,
    while the try runs (Airflow's SetRenderedFields); a later call replaces them.

    One conditional UPDATE: the row of this try, only while its TI is running with it.
    """
    size = len(json.dumps(body.rendered_fields).encode())
    if size > MAX_RENDERED_FIELDS_BYTES:
        raise HTTPException(
            413, f"rendered fields are {size} bytes of JSON, more than {MAX_RENDERED_FIELDS_BYTES}"
        )
    running = (
        select(TaskInstance.id).where(*is_this_try(claims, TaskInstanceState.RUNNING)).exists()
    )
    result = session.execute(
        update(TaskInstanceTry)
        .where(
            TaskInstanceTry.task_instance_id == claims.ti_id,
            TaskInstanceTry.try_number == claims.try_number,
            running,
        )
        .values(rendered_fields=body.rendered_fields)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise refusal(load_ti(session, claims), claims, "rendered fields refused")
    session.commit()
    return Response(status_code=204)
