"""Request and response bodies of the variables and connections REST API.

A connection's password and the values of its sensitive ``extra`` keys (a name holding
one of Airflow's sensitive words: ``password``, ``secret``, ``token``, ``api_key``...,
at any depth of the JSON; everything under such a key) are returned as ``***``. A PUT
that sends ``***`` back in those places keeps the stored values, as Airflow's UI does.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ketch.authoring.connection import Connection
from ketch.variables.store import VariableRecord
from ketch.worker.secrets_mask import looks_sensitive

MASK = "***"


def _mask_all(value: Any) -> Any:
    """Every scalar under a sensitive key becomes ``***`` (the structure is kept)."""
    if isinstance(value, dict):
        return {key: _mask_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_all(item) for item in value]
    return value if value is None else MASK


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _mask_all(item) if looks_sensitive(str(key)) else _mask(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask(item) for item in value]
    return value


def mask_extra(extra: str | None) -> str | None:
    """``extra`` with the values of its sensitive keys as ``***``, at any depth; unchanged
    (the same text) when nothing is sensitive or it is not JSON."""
    if not extra:
        return extra
    try:
        data = json.loads(extra)
    except ValueError:
        return extra
    masked = _mask(data)
    return extra if masked == data else json.dumps(masked)


def _unmask(sent: Any, stored: Any, *, sensitive: bool) -> Any:
    if sensitive and sent == MASK:
        return stored
    if isinstance(sent, dict) and isinstance(stored, dict):
        return {
            key: _unmask(item, stored[key], sensitive=sensitive or looks_sensitive(str(key)))
            if key in stored
            else item
            for key, item in sent.items()
        }
    if isinstance(sent, list) and isinstance(stored, list) and len(sent) == len(stored):
        return [_unmask(a, b, sensitive=sensitive) for a, b in zip(sent, stored, strict=True)]
    return sent


def keep_masked_values(sent: Connection, stored: Connection) -> Connection:
    """``sent`` (a PUT body) with each ``***`` where the API shows a stored secret (the
    password, a sensitive extra value at the same place) replaced by the stored value."""
    if sent.password == MASK and stored.password is not None:
        sent.password = stored.password
    if sent.extra and stored.extra:
        try:
            new, old = json.loads(sent.extra), json.loads(stored.extra)
        except ValueError:
            return sent
        restored = _unmask(new, old, sensitive=False)
        if restored != new:
            sent.extra = json.dumps(restored)
    return sent


class VariableResponse(BaseModel):
    key: str
    value: str = Field(description="The value (JSON text for structured values); *** if sensitive.")
    description: str | None = None
    is_sensitive: bool
    source: str | None = Field(
        default=None, description="The sync source that owns the key; null when set by hand."
    )
    source_version: str | None = None
    created_at: str
    updated_at: str

    @classmethod
    def from_record(cls, record: VariableRecord) -> VariableResponse:
        return cls(**record.to_dict(reveal=False))


class VariableCollectionResponse(BaseModel):
    variables: list[VariableResponse]
    total_entries: int


class VariablePutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any = Field(description="A string, or any JSON value (stored as its JSON text).")
    description: str | None = None
    is_sensitive: bool | None = None


class VariablePostBody(VariablePutBody):
    key: str


class ImportResponse(BaseModel):
    imported: int


class ConnectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    conn_type: str
    description: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    port: int | None = Field(default=None, ge=0, le=65535)
    extra: str | dict[str, Any] | None = None

    def to_connection(self, conn_id: str) -> Connection:
        data = self.model_dump(by_alias=True, exclude={"connection_id"})
        return Connection.from_dict(conn_id, data)


class ConnectionPostBody(ConnectionBody):
    connection_id: str


# Airflow's field names in a PATCH body and its update_mask (``schema``, not ``schema_``).
PATCHABLE = ("conn_type", "description", "host", "login", "password", "schema", "port", "extra")


def patched_connection(
    stored: Connection, body: ConnectionPostBody, update_mask: list[str] | None
) -> Connection:
    """``stored`` with a PATCH applied, as Airflow 3's ``update_orm_from_pydantic`` does:
    with ``update_mask``, only the fields it names (a masked field the body leaves out is
    cleared); without it, every field the body sets, and the password and extra always
    (left out: cleared). ``***`` where a GET shows a hidden value keeps the stored value,
    so a form that sends back what it was shown changes no secret."""
    sent = body.model_dump(by_alias=True, exclude={"connection_id"})
    given = {"schema" if name == "schema_" else name for name in body.model_fields_set}
    chosen = (given | {"password", "extra"}) if update_mask is None else set(update_mask)
    data = {name: getattr(stored, name) for name in PATCHABLE}
    data |= {name: sent[name] for name in PATCHABLE if name in chosen}
    return keep_masked_values(ConnectionBody(**data).to_connection(stored.conn_id), stored)


class ConnectionResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    connection_id: str
    conn_type: str
    description: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = Field(default=None, description="*** when set (never returned).")
    schema_: str | None = Field(default=None, alias="schema")
    port: int | None = None
    extra: str | None = Field(
        default=None,
        description="JSON text; the values of sensitive keys (password, secret, token, "
        "api_key...; at any depth) are ***.",
    )

    @classmethod
    def from_connection(cls, conn: Connection) -> ConnectionResponse:
        return cls(
            connection_id=conn.conn_id,
            conn_type=conn.conn_type,
            description=conn.description,
            host=conn.host,
            login=conn.login,
            password=MASK if conn.password else None,
            schema=conn.schema,
            port=conn.port,
            extra=mask_extra(conn.extra),
        )


class ConnectionCollectionResponse(BaseModel):
    connections: list[ConnectionResponse]
    total_entries: int
