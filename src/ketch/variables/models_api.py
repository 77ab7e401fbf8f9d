"""Request and response bodies of the variables and connections REST API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ketch.authoring.connection import Connection
from ketch.variables.store import VariableRecord

MASK = "***"


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
    port: int | None = None
    extra: str | dict[str, Any] | None = None

    def to_connection(self, conn_id: str) -> Connection:
        data = self.model_dump(by_alias=True, exclude={"connection_id"})
        return Connection.from_dict(conn_id, data)


class ConnectionPostBody(ConnectionBody):
    connection_id: str


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
    extra: str | None = None

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
            extra=conn.extra,
        )


class ConnectionCollectionResponse(BaseModel):
    connections: list[ConnectionResponse]
    total_entries: int
