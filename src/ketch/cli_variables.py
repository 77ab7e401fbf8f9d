"""``ketch variables``, ``ketch connections`` and ``ketch rotate-fernet-key``.

The commands work on the database directly (as the other state commands of
:mod:`ketch.cli`), through :mod:`ketch.variables.store`. Files are Airflow's
formats, so an existing ``variables.json`` imports unchanged. Values of sensitive
variables are shown as ``***`` by ``list``; ``get`` prints the value (it is what
the user asked for). ``sync --once`` and ``sync-status`` run the sync of
:mod:`ketch.variables.sync`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from ketch.cli import CliError, _db_session, _emit, _engine, _output_option, _settings


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CliError(f"{path}: no such file") from exc
    except ValueError as exc:
        raise CliError(f"{path}: not valid JSON: {exc}") from exc


def _write_json_file(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


# --- variables -----------------------------------------------------------------------------


@click.group()
def variables() -> None:
    """Variables: key -> value, encrypted at rest, read by tasks with Variable.get."""


@variables.command("list")
@_output_option
def variables_list(output: str) -> None:
    """Every variable (values of sensitive ones hidden) and who owns it."""
    from ketch.variables import store

    with _db_session() as session:
        rows = [r.to_dict(reveal=False) for r in store.list_variables(session, _settings())]
    for row in rows:
        row["source"] = row["source"] or "(manual)"
    _emit(output, rows, ("key", "value", "is_sensitive", "source", "description"))


@variables.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Parse the value as JSON and pretty-print.")
@click.option("--default", default=None, help="Print this when the variable does not exist.")
def variables_get(key: str, as_json: bool, default: str | None) -> None:
    """Print a variable's value."""
    from ketch.variables import store

    with _db_session() as session:
        try:
            value = store.get_variable(session, _settings(), key).value
        except store.VariableNotFound:
            if default is None:
                raise
            value = default
    if as_json:
        try:
            value = json.dumps(json.loads(value), indent=2)
        except ValueError as exc:
            raise CliError(f"variable {key!r} is not JSON: {exc}") from exc
    click.echo(value)


@variables.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--description", default=None, help="What the variable is for.")
@click.option(
    "--sensitive/--not-sensitive",
    default=None,
    help="Hide the value in listings and task logs (default: by key name, e.g. *password*).",
)
@click.option("--json", "as_json", is_flag=True, help="VALUE is JSON (checked, stored as text).")
def variables_set(
    key: str, value: str, description: str | None, sensitive: bool | None, as_json: bool
) -> None:
    """Create or update a variable (it becomes manual: no sync source owns it)."""
    from ketch.variables import store

    if as_json:
        try:
            json.loads(value)
        except ValueError as exc:
            raise CliError(f"VALUE is not valid JSON: {exc}") from exc
    with _db_session() as session:
        store.set_variable(
            session,
            _settings(),
            key,
            value,
            description=description,
            is_sensitive=sensitive,
            actor="cli",
        )
    click.echo(f"variable {key} set")


@variables.command("delete")
@click.argument("key")
def variables_delete(key: str) -> None:
    """Delete a variable."""
    from ketch.variables import store

    with _db_session() as session:
        store.delete_variable(session, key, actor="cli")
    click.echo(f"variable {key} deleted")


@variables.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def variables_import(file: Path) -> None:
    """Import Airflow's variables.json (a flat JSON object); all or nothing."""
    from ketch.variables import store

    data = _read_json_file(file)
    with _db_session() as session:
        count = store.import_variables(session, _settings(), data, actor="cli")
    click.echo(f"{count} variables imported from {file}")


@variables.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def variables_export(file: Path) -> None:
    """Write every variable to FILE in Airflow's format (values in clear: keep it safe)."""
    from ketch.variables import store

    with _db_session() as session:
        data = store.export_variables(session, _settings())
    _write_json_file(file, data)
    click.echo(f"{len(data)} variables exported to {file}")


def _status_rows(statuses: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for status in statuses:
        if dataclasses.is_dataclass(status) and not isinstance(status, type):
            row = dataclasses.asdict(status)
        elif hasattr(status, "model_dump"):
            row = status.model_dump(mode="json")
        else:
            row = dict(vars(status))
        rows.append({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})
    return rows


_STATUS_COLUMNS = (
    "source_id",
    "version",
    "last_success_at",
    "last_error",
    "managed_keys",
)


@variables.command("sync")
@click.option("--once", is_flag=True, required=True, help="Run one sync of every source and exit.")
@_output_option
def variables_sync(once: bool, output: str) -> None:
    """Sync every configured source once (for CI/CD); exit 1 if a source failed."""
    from ketch.cli import _require_current_schema
    from ketch.variables.sync import run_sync_once

    settings = _settings()
    engine = _engine(settings)
    _require_current_schema(engine)
    statuses = run_sync_once(settings, engine)
    rows = _status_rows(statuses)
    _emit(output, rows, _STATUS_COLUMNS)
    if any(row.get("ok") is False or ("ok" not in row and row.get("error")) for row in rows):
        raise SystemExit(1)


@variables.command("sync-status")
@_output_option
def variables_sync_status(output: str) -> None:
    """Each source's last success, last error, current version and managed keys."""
    from ketch.variables.sync import sync_status

    with _db_session() as session:
        rows = _status_rows(sync_status(session))
    _emit(output, rows, _STATUS_COLUMNS)


# --- connections ---------------------------------------------------------------------------


@click.group()
def connections() -> None:
    """Connections: how tasks reach other systems (Airflow's fields and URI format)."""


@connections.command("list")
@_output_option
def connections_list(output: str) -> None:
    """Every connection (passwords hidden)."""
    from ketch.variables import store

    with _db_session() as session:
        rows = []
        for conn in store.list_connections(session, _settings()):
            row = {"conn_id": conn.conn_id, **conn.to_dict()}
            row["password"] = "***" if conn.password else None
            rows.append(row)
    _emit(output, rows, ("conn_id", "conn_type", "host", "port", "schema", "login"))


@connections.command("get")
@click.argument("conn_id")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["uri", "json"]),
    default="json",
    show_default=True,
    help="Airflow's URI, or the fields as JSON (password included).",
)
def connections_get(conn_id: str, output: str) -> None:
    """Print a connection (with its password: it is what the user asked for)."""
    from ketch.variables import store

    with _db_session() as session:
        conn = store.get_connection(session, _settings(), conn_id)
    if output == "uri":
        click.echo(conn.get_uri())
    else:
        click.echo(json.dumps({"conn_id": conn.conn_id, **conn.to_dict()}, indent=2))


@connections.command("add")
@click.argument("conn_id")
@click.option(
    "--conn-uri", default=None, help="Airflow's URI: type://login:password@host:port/schema?extra"
)
@click.option("--conn-json", default=None, help="The fields as a JSON object.")
@click.option("--conn-type", default=None)
@click.option("--conn-host", default=None)
@click.option("--conn-login", default=None)
@click.option("--conn-password", default=None)
@click.option("--conn-schema", default=None)
@click.option("--conn-port", type=int, default=None)
@click.option("--conn-extra", default=None, help="Extra fields as a JSON object.")
@click.option("--conn-description", default=None)
def connections_add(
    conn_id: str,
    conn_uri: str | None,
    conn_json: str | None,
    conn_type: str | None,
    conn_host: str | None,
    conn_login: str | None,
    conn_password: str | None,
    conn_schema: str | None,
    conn_port: int | None,
    conn_extra: str | None,
    conn_description: str | None,
) -> None:
    """Add a connection from a URI, JSON, or fields (fails if CONN_ID exists)."""
    from ketch.authoring.connection import Connection
    from ketch.variables import store

    fields = {
        "conn_type": conn_type,
        "host": conn_host,
        "login": conn_login,
        "password": conn_password,
        "schema": conn_schema,
        "port": conn_port,
        "extra": conn_extra,
    }
    given = [name for name, value in fields.items() if value is not None]
    if sum(x is not None for x in (conn_uri, conn_json)) + bool(given) != 1:
        raise CliError("give exactly one of --conn-uri, --conn-json, or --conn-type and fields")
    try:
        if conn_uri is not None:
            conn = Connection.from_uri(conn_id, conn_uri, description=conn_description)
            if conn_extra is not None:
                conn.extra = conn_extra
        elif conn_json is not None:
            data = json.loads(conn_json)
            if not isinstance(data, dict):
                raise ValueError("--conn-json must be a JSON object")
            conn = Connection.from_dict(conn_id, data)
        else:
            if conn_type is None:
                raise ValueError("--conn-type is required without --conn-uri / --conn-json")
            conn = Connection.from_dict(conn_id, {**fields, "description": conn_description})
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    with _db_session() as session:
        store.set_connection(session, _settings(), conn, overwrite=False)
    click.echo(f"connection {conn_id} added")


@connections.command("delete")
@click.argument("conn_id")
def connections_delete(conn_id: str) -> None:
    """Delete a connection."""
    from ketch.variables import store

    with _db_session() as session:
        store.delete_connection(session, conn_id)
    click.echo(f"connection {conn_id} deleted")


@connections.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--overwrite/--no-overwrite", default=True, show_default=True)
def connections_import(file: Path, overwrite: bool) -> None:
    """Import Airflow's connections JSON (conn_id -> fields or URI); all or nothing."""
    from ketch.variables import store

    data = _read_json_file(file)
    with _db_session() as session:
        count = store.import_connections(session, _settings(), data, overwrite=overwrite)
    click.echo(f"{count} connections imported from {file}")


@connections.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def connections_export(file: Path) -> None:
    """Write every connection to FILE in Airflow's JSON format (passwords in clear)."""
    from ketch.variables import store

    with _db_session() as session:
        data = store.export_connections(session, _settings())
    _write_json_file(file, data)
    click.echo(f"{len(data)} connections exported to {file}")


# --- key rotation --------------------------------------------------------------------------


@click.command("rotate-fernet-key")
def rotate_fernet_key() -> None:
    """Re-encrypt every variable and connection secret with the first [core] fernet_key.

    Put the new key first (``KETCH__CORE__FERNET_KEY=new,old``), run this, then drop
    the old key.
    """
    from ketch.variables import store

    with _db_session() as session:
        count = store.rotate_fernet_key(session, _settings())
    click.echo(f"{count} values re-encrypted with the first fernet key")
