"""Connections: list, get, create (POST), create or replace (PUT), update (PATCH, Airflow
3's shape: the body names the connection, ``?update_mask=`` the fields), delete, import.

Passwords and the values of sensitive ``extra`` keys are never returned (``***``); a PUT
that sends ``***`` back there keeps the stored value (see
:mod:`ketch.variables.models_api`). Import takes Airflow's connections JSON export
format (conn_id -> fields or URI) as the body, all or nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Response, status

from ketch.api.rest.common import Limit, Offset, SessionDep, SettingsDep, error_responses
from ketch.operations import InvalidRequest
from ketch.variables import store
from ketch.variables.models_api import (
    PATCHABLE,
    ConnectionBody,
    ConnectionCollectionResponse,
    ConnectionPostBody,
    ConnectionResponse,
    ImportResponse,
    keep_masked_values,
    patched_connection,
)

router = APIRouter(prefix="/connections", tags=["Connection"])


@router.get("")
def list_connections(
    session: SessionDep, settings: SettingsDep, limit: Limit = 50, offset: Offset = 0
) -> ConnectionCollectionResponse:
    conns = store.list_connections(session, settings)
    return ConnectionCollectionResponse(
        connections=[ConnectionResponse.from_connection(c) for c in conns[offset : offset + limit]],
        total_entries=len(conns),
    )


def _to_connection(body: ConnectionBody, conn_id: str) -> Any:
    try:
        return body.to_connection(conn_id)
    except ValueError as exc:
        raise InvalidRequest("connection", str(exc)) from exc


@router.post("", status_code=status.HTTP_201_CREATED)
def post_connection(
    body: ConnectionPostBody, session: SessionDep, settings: SettingsDep
) -> ConnectionResponse:
    """Create a connection; 409 if the conn_id exists."""
    try:
        conn = store.set_connection(
            session, settings, _to_connection(body, body.connection_id), overwrite=False
        )
    except store.ConnectionAlreadyExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    session.commit()
    return ConnectionResponse.from_connection(conn)


@router.post("/import")
def import_connections(
    session: SessionDep, settings: SettingsDep, data: Any = Body(...)
) -> ImportResponse:
    count = store.import_connections(session, settings, data)
    session.commit()
    return ImportResponse(imported=count)


@router.get("/{conn_id:path}")
def get_connection(conn_id: str, session: SessionDep, settings: SettingsDep) -> ConnectionResponse:
    return ConnectionResponse.from_connection(store.get_connection(session, settings, conn_id))


@router.put("/{conn_id:path}")
def put_connection(
    conn_id: str, body: ConnectionBody, session: SessionDep, settings: SettingsDep
) -> ConnectionResponse:
    """Create the connection or replace all its fields; ``***`` where a GET shows a hidden
    value (the password, a sensitive extra key) keeps the stored value."""
    conn = _to_connection(body, conn_id)
    try:
        stored = store.get_connection(session, settings, conn_id)
    except store.ConnectionNotFound:
        stored = None
    if stored is not None:
        conn = keep_masked_values(conn, stored)
    conn = store.set_connection(session, settings, conn)
    session.commit()
    return ConnectionResponse.from_connection(conn)


UpdateMask = Annotated[
    list[str] | None,
    Query(description="The fields to change (Airflow's names); without it, every field sent."),
]


@router.patch("/{conn_id:path}", responses=error_responses(400, 404))
def patch_connection(
    conn_id: str,
    body: ConnectionPostBody,
    session: SessionDep,
    settings: SettingsDep,
    update_mask: UpdateMask = None,
) -> ConnectionResponse:
    """Update a connection (Airflow 3's PATCH). 400 if the body's ``connection_id`` is not
    the path's or ``update_mask`` names a field connections do not have (Airflow ignores
    such a name; ketch says so); 404 if it does not exist. An edit that should keep the
    password names the other fields in ``update_mask`` (or sends ``***`` back)."""
    if body.connection_id != conn_id:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "The connection_id in the request body does not match the URL parameter",
        )
    unknown = sorted(set(update_mask or ()) - set(PATCHABLE))
    if unknown:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"update_mask: no such connection field(s) {unknown}; fields: {list(PATCHABLE)}",
        )
    stored = store.get_connection(session, settings, conn_id)
    try:
        conn = patched_connection(stored, body, update_mask)
    except ValueError as exc:
        raise InvalidRequest("connection", str(exc)) from exc
    conn = store.set_connection(session, settings, conn)
    session.commit()
    return ConnectionResponse.from_connection(conn)


@router.delete("/{conn_id:path}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_connection(conn_id: str, session: SessionDep) -> Response:
    store.delete_connection(session, conn_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
