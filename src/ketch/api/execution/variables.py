"""Execution API for task code: variables and connections, read with the try's token.

Any live try's token may read any variable or connection (as in Airflow, where every
task sees every variable); the value is decrypted here, so a try never needs the
database or the Fernet key. 404 when the key does not exist. The token of a try that
has ended (a kept failed pod, a leaked token) gets 401: one primary-key lookup of the
task instance per read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from ketch.api.execution.claims import LiveClaimsDep, SessionDep, SettingsDep
from ketch.variables import store
from ketch.worker.secrets_mask import looks_sensitive

router = APIRouter(prefix="/execution", tags=["execution"])


@router.get("/variables/{key:path}")
def get_variable(
    key: str, claims: LiveClaimsDep, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    try:
        record = store.get_variable(session, settings, key)
    except store.VariableNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return {
        "key": record.key,
        "value": record.value,
        "is_sensitive": record.is_sensitive or looks_sensitive(key),
    }


@router.get("/connections/{conn_id:path}")
def get_connection(
    conn_id: str, claims: LiveClaimsDep, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    try:
        conn = store.get_connection(session, settings, conn_id)
    except store.ConnectionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return {"conn_id": conn.conn_id, **conn.to_dict()}
