"""Variables and connections in the database: CRUD, Airflow's file formats, key rotation.

Values are encrypted with :mod:`ketch.variables.crypto` before they reach the
database: a variable's value, a connection's password and extra. Functions take
an open session and never commit (the caller does, as with :mod:`ketch.operations`).

Ownership: a variable written here (CLI, REST API, import) is a *manual* variable
(``source`` is None). Sync sources own the keys they created; setting such a key
by hand makes it manual, and the sync's conflict policy decides what happens next
(:mod:`ketch.variables.sync`). Every change is written to ``variable_audit_log``
(key, source, version, time; never the value).

File formats are Airflow's:

- variables: a flat JSON object ``{"key": value}``; a value that is not a string is
  stored as its JSON text; ``{"key": {"value": ..., "description": ...}}`` also reads.
  Export writes the same (values that are JSON text are written as JSON).
- connections: ``{"conn_id": {"conn_type", "description", "host", "login",
  "password", "schema", "port", "extra"}}``; a value may also be a URI string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import MultiFernet
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ketch.authoring.connection import Connection, ConnectionUriError
from ketch.config import Settings
from ketch.db.models import Connection as ConnectionRow
from ketch.db.models import Variable as VariableRow
from ketch.db.models import VariableAuditLog
from ketch.operations import InvalidRequest, NotFound, OperationError
from ketch.variables import crypto
from ketch.worker.secrets_mask import looks_sensitive

MAX_KEY_LENGTH = 250


class VariableNotFound(NotFound):
    def __init__(self, key: str) -> None:
        super().__init__(f"variable {key!r} not found")
        self.key = key


class ConnectionNotFound(NotFound):
    def __init__(self, conn_id: str) -> None:
        super().__init__(f"connection {conn_id!r} not found")
        self.conn_id = conn_id


class ConnectionAlreadyExists(OperationError):
    """``add`` of a conn_id that exists (REST: 409)."""

    def __init__(self, conn_id: str) -> None:
        super().__init__(f"connection {conn_id!r} already exists")
        self.conn_id = conn_id


@dataclass
class VariableRecord:
    key: str
    value: str
    description: str | None
    is_sensitive: bool
    source: str | None
    source_version: str | None
    created_at: datetime
    updated_at: datetime

    def to_dict(self, *, reveal: bool = True) -> dict[str, Any]:
        """JSON-ready; ``reveal=False`` hides the value of a sensitive variable."""
        return {
            "key": self.key,
            "value": self.value if reveal or not self.is_sensitive else "***",
            "description": self.description,
            "is_sensitive": self.is_sensitive,
            "source": self.source,
            "source_version": self.source_version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def utcnow() -> datetime:
    return datetime.now(UTC)


def audit(session: Session, key: str, action: str, source: str, version: str | None = None) -> None:
    """One audit row: what changed, by which source or actor; never the value."""
    session.add(
        VariableAuditLog(key=key, action=action, source=source, version=version, timestamp=utcnow())
    )


# --- variables -------------------------------------------------------------------------


def _record(fernet: MultiFernet, row: VariableRow) -> VariableRecord:
    return VariableRecord(
        key=row.key,
        value=crypto.decrypt(fernet, row.val),
        description=row.description,
        is_sensitive=row.is_sensitive,
        source=row.source,
        source_version=row.source_version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest("key", f"a variable key has 1 to {MAX_KEY_LENGTH} characters")


def list_variables(session: Session, settings: Settings) -> list[VariableRecord]:
    fernet = crypto.get_fernet(settings)
    rows = session.scalars(select(VariableRow).order_by(VariableRow.key))
    return [_record(fernet, row) for row in rows]


def get_variable(session: Session, settings: Settings, key: str) -> VariableRecord:
    row = session.scalars(select(VariableRow).where(VariableRow.key == key)).first()
    if row is None:
        raise VariableNotFound(key)
    return _record(crypto.get_fernet(settings), row)


def value_text(value: Any) -> str:
    """What is stored for a value: strings as they are, anything else as its JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def set_variable(
    session: Session,
    settings: Settings,
    key: str,
    value: Any,
    *,
    description: str | None = None,
    is_sensitive: bool | None = None,
    actor: str = "user",
) -> VariableRecord:
    """Create or update a variable by hand (it becomes manual: no source owns it).

    ``description`` / ``is_sensitive`` None: unchanged for an existing variable;
    a new variable is sensitive when its key looks like a secret.
    """
    _check_key(key)
    fernet = crypto.get_fernet(settings)
    now = utcnow()
    row = session.scalars(select(VariableRow).where(VariableRow.key == key)).first()
    if row is None:
        row = VariableRow(
            key=key,
            val=crypto.encrypt(fernet, value_text(value)),
            description=description,
            is_sensitive=looks_sensitive(key) if is_sensitive is None else is_sensitive,
            source=None,
            source_version=None,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        audit(session, key, "created", actor)
    else:
        row.val = crypto.encrypt(fernet, value_text(value))
        if description is not None:
            row.description = description
        if is_sensitive is not None:
            row.is_sensitive = is_sensitive
        row.source = None
        row.source_version = None
        row.updated_at = now
        audit(session, key, "updated", actor)
    session.flush()
    return _record(fernet, row)


def delete_variable(session: Session, key: str, *, actor: str = "user") -> None:
    result = session.execute(delete(VariableRow).where(VariableRow.key == key))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise VariableNotFound(key)
    audit(session, key, "deleted", actor)


def parse_variables_file(data: Any) -> dict[str, tuple[str, str | None]]:
    """Airflow's variables.json -> {key: (stored text, description)}; InvalidRequest if bad."""
    if not isinstance(data, dict):
        raise InvalidRequest("file", "a variables file is a JSON object of key: value")
    parsed: dict[str, tuple[str, str | None]] = {}
    for key, value in data.items():
        _check_key(key)
        description = None
        if isinstance(value, dict) and "value" in value and set(value) <= {"value", "description"}:
            description = value.get("description")
            value = value["value"]
        parsed[key] = (value_text(value), description)
    return parsed


def import_variables(
    session: Session, settings: Settings, data: Any, *, actor: str = "import"
) -> int:
    """Set every variable of an Airflow variables file (all or nothing); the count."""
    parsed = parse_variables_file(data)
    for key, (text, description) in parsed.items():
        set_variable(session, settings, key, text, description=description, actor=actor)
    return len(parsed)


def export_variables(session: Session, settings: Settings) -> dict[str, Any]:
    """Airflow's export format: JSON values as JSON, with descriptions where set."""
    exported: dict[str, Any] = {}
    for record in list_variables(session, settings):
        try:
            value: Any = json.loads(record.value)
        except ValueError:
            value = record.value
        exported[record.key] = (
            {"value": value, "description": record.description} if record.description else value
        )
    return exported


# --- connections -----------------------------------------------------------------------


def _connection(fernet: MultiFernet, row: ConnectionRow) -> Connection:
    return Connection(
        conn_id=row.conn_id,
        conn_type=row.conn_type,
        description=row.description,
        host=row.host,
        schema=row.schema,
        login=row.login,
        password=crypto.decrypt(fernet, row.password) if row.password is not None else None,
        port=row.port,
        extra=crypto.decrypt(fernet, row.extra) if row.extra is not None else None,
    )


def list_connections(session: Session, settings: Settings) -> list[Connection]:
    fernet = crypto.get_fernet(settings)
    rows = session.scalars(select(ConnectionRow).order_by(ConnectionRow.conn_id))
    return [_connection(fernet, row) for row in rows]


def get_connection(session: Session, settings: Settings, conn_id: str) -> Connection:
    row = session.scalars(select(ConnectionRow).where(ConnectionRow.conn_id == conn_id)).first()
    if row is None:
        raise ConnectionNotFound(conn_id)
    return _connection(crypto.get_fernet(settings), row)


def _check_connection(conn: Connection) -> None:
    if not conn.conn_id or len(conn.conn_id) > MAX_KEY_LENGTH:
        raise InvalidRequest("conn_id", f"a conn_id has 1 to {MAX_KEY_LENGTH} characters")
    if not conn.conn_type:
        raise InvalidRequest("conn_type", "a connection needs a conn_type")
    if conn.extra:
        try:
            json.loads(conn.extra)
        except ValueError as exc:
            raise InvalidRequest("extra", f"extra is not valid JSON: {exc}") from exc


def set_connection(
    session: Session, settings: Settings, conn: Connection, *, overwrite: bool = True
) -> Connection:
    """Create the connection, or replace all its fields (``overwrite=False``: 409 instead)."""
    _check_connection(conn)
    fernet = crypto.get_fernet(settings)
    now = utcnow()
    row = session.scalars(
        select(ConnectionRow).where(ConnectionRow.conn_id == conn.conn_id)
    ).first()
    if row is not None and not overwrite:
        raise ConnectionAlreadyExists(conn.conn_id)
    if row is None:
        row = ConnectionRow(conn_id=conn.conn_id, created_at=now)
        session.add(row)
    row.conn_type = conn.conn_type
    row.description = conn.description
    row.host = conn.host
    row.schema = conn.schema
    row.login = conn.login
    row.password = crypto.encrypt(fernet, conn.password) if conn.password is not None else None
    row.port = conn.port
    row.extra = crypto.encrypt(fernet, conn.extra) if conn.extra is not None else None
    row.updated_at = now
    session.flush()
    return _connection(fernet, row)


def delete_connection(session: Session, conn_id: str) -> None:
    result = session.execute(delete(ConnectionRow).where(ConnectionRow.conn_id == conn_id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise ConnectionNotFound(conn_id)


def parse_connections_file(data: Any) -> list[Connection]:
    """Airflow's connections JSON -> connections; InvalidRequest naming the bad entry."""
    if not isinstance(data, dict):
        raise InvalidRequest("file", "a connections file is a JSON object of conn_id: fields")
    conns = []
    for conn_id, value in data.items():
        try:
            if isinstance(value, str):
                conns.append(Connection.from_uri(conn_id, value))
            elif isinstance(value, dict):
                conns.append(Connection.from_dict(conn_id, value))
            else:
                raise ValueError(f"connection {conn_id!r}: expected a URI or an object")
        except (ValueError, ConnectionUriError) as exc:
            raise InvalidRequest(conn_id, str(exc)) from exc
    for conn in conns:
        _check_connection(conn)
    return conns


def import_connections(
    session: Session, settings: Settings, data: Any, *, overwrite: bool = True
) -> int:
    conns = parse_connections_file(data)
    for conn in conns:
        set_connection(session, settings, conn, overwrite=overwrite)
    return len(conns)


def export_connections(session: Session, settings: Settings) -> dict[str, Any]:
    return {conn.conn_id: conn.to_dict() for conn in list_connections(session, settings)}


# --- key rotation ----------------------------------------------------------------------


def rotate_fernet_key(session: Session, settings: Settings) -> int:
    """Re-encrypt every stored secret with the first configured key; the number of values.

    Put the new key first in ``[core] fernet_key`` (old keys after it), run this, then
    drop the old keys.
    """
    fernet = crypto.get_fernet(settings)
    count = 0
    for var in session.scalars(select(VariableRow)):
        var.val = crypto.rotate(fernet, var.val)
        count += 1
    for conn in session.scalars(select(ConnectionRow)):
        if conn.password is not None:
            conn.password = crypto.rotate(fernet, conn.password)
            count += 1
        if conn.extra is not None:
            conn.extra = crypto.rotate(fernet, conn.extra)
            count += 1
    session.flush()
    return count
