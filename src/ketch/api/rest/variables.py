"""Variables: list, get, create (POST), create or update (PUT), delete, import.

Values of sensitive variables come back as ``***``. Import takes Airflow's
``variables.json`` (a flat JSON object) as the request body, all or nothing.
The sync status lives at ``/variables/syncStatus`` (:mod:`ketch.api.rest.variable_sync`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException, Response, status
from sqlalchemy import select

from ketch.api.rest.common import (
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    error_responses,
    paths_of_their_own,
)
from ketch.db.models import Variable as VariableRow
from ketch.variables import store
from ketch.variables.models_api import (
    ImportResponse,
    VariableCollectionResponse,
    VariablePostBody,
    VariablePutBody,
    VariableResponse,
)

router = APIRouter(prefix="/variables", tags=["Variable"])

# /variables/syncStatus and /variables/import are paths of their own, not variable keys.
_KEY_PATH = [paths_of_their_own("key", frozenset({"syncStatus", "import"}))]


@router.get("")
def list_variables(
    session: SessionDep, settings: SettingsDep, limit: Limit = 50, offset: Offset = 0
) -> VariableCollectionResponse:
    records = store.list_variables(session, settings)
    return VariableCollectionResponse(
        variables=[VariableResponse.from_record(r) for r in records[offset : offset + limit]],
        total_entries=len(records),
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 409))
def post_variable(
    body: VariablePostBody, session: SessionDep, settings: SettingsDep
) -> VariableResponse:
    """Create a variable; 409 if the key exists (PUT replaces)."""
    exists = session.scalars(select(VariableRow.id).where(VariableRow.key == body.key)).first()
    if exists is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"variable {body.key!r} already exists")
    record = store.set_variable(
        session,
        settings,
        body.key,
        body.value,
        description=body.description,
        is_sensitive=body.is_sensitive,
        actor="api",
    )
    session.commit()
    return VariableResponse.from_record(record)


@router.post("/import", responses=error_responses(400))
def import_variables(
    session: SessionDep, settings: SettingsDep, data: Any = Body(...)
) -> ImportResponse:
    """Import Airflow's variables.json format (the JSON object as the body); 422 if invalid."""
    count = store.import_variables(session, settings, data, actor="api")
    session.commit()
    return ImportResponse(imported=count)


@router.get("/{key:path}", responses=error_responses(404), dependencies=_KEY_PATH)
def get_variable(key: str, session: SessionDep, settings: SettingsDep) -> VariableResponse:
    return VariableResponse.from_record(store.get_variable(session, settings, key))


@router.put("/{key:path}", responses=error_responses(400), dependencies=_KEY_PATH)
def put_variable(
    key: str, body: VariablePutBody, session: SessionDep, settings: SettingsDep
) -> VariableResponse:
    """Create or update; a key a sync source owned becomes manual."""
    record = store.set_variable(
        session,
        settings,
        key,
        body.value,
        description=body.description,
        is_sensitive=body.is_sensitive,
        actor="api",
    )
    session.commit()
    return VariableResponse.from_record(record)


@router.delete(
    "/{key:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
    dependencies=_KEY_PATH,
)
def delete_variable(key: str, session: SessionDep) -> Response:
    store.delete_variable(session, key, actor="api")
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
