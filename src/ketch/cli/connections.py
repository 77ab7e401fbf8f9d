"""``ketch connections``: list, get, add, delete, import, export.

Airflow's fields, URI format and connections JSON; passwords and sensitive extra values
are hidden by ``list`` and printed by ``get`` (it is what the user asked for), on the
database. The REST API (:mod:`ketch.cli.backends`) never returns them (``***``).

A password is better not typed on the command line (shell history, ``ps``):
``--password-from-file PATH`` or ``--password-stdin`` read it instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ketch.cli._common import (
    CliError,
    emit,
    output_option,
    read_json_file,
    write_json_file,
)
from ketch.cli.backends import get_backend


@click.group()
def connections() -> None:
    """Connections: how tasks reach other systems (Airflow's fields and URI format)."""


@connections.command("list")
@output_option
def connections_list(output: str) -> None:
    """Every connection (passwords hidden)."""
    rows = get_backend().list_connections()
    emit(output, rows, ("conn_id", "conn_type", "host", "port", "schema", "login"))


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
    """Print a connection (with its password: it is what the user asked for).

    Through the REST API the password is never returned: JSON shows it as ***, and a URI
    (which would carry a wrong password) is refused for a connection that has one; the
    values of sensitive extra keys likewise.
    """
    from ketch.authoring.connection import Connection
    from ketch.cli.backends.remote import hides_extra

    backend = get_backend()
    row = backend.get_connection(conn_id)
    hidden = backend.remote and (row["password"] is not None or hides_extra(row["extra"]))
    if output == "uri":
        if hidden:
            what = "a password" if row["password"] is not None else "sensitive extra fields"
            raise CliError(
                f"connection {conn_id!r} has {what} and the REST API never returns them: "
                "no URI (use -o json, or database access)"
            )
        fields = {k: v for k, v in row.items() if k != "conn_id"}
        click.echo(Connection.from_dict(conn_id, fields).get_uri())
        return
    click.echo(json.dumps(row, indent=2))
    if hidden:
        click.echo(
            "note: the REST API never returns passwords or sensitive extra values (shown as ***)",
            err=True,
        )


@connections.command("add")
@click.argument("conn_id")
@click.option(
    "--conn-uri", default=None, help="Airflow's URI: type://login:password@host:port/schema?extra"
)
@click.option("--conn-json", default=None, help="The fields as a JSON object.")
@click.option("--conn-type", default=None)
@click.option("--conn-host", default=None)
@click.option("--conn-login", default=None)
@click.option(
    "--conn-password",
    default=None,
    help="The password (seen by shell history and ps: prefer --password-from-file or "
    "--password-stdin).",
)
@click.option(
    "--password-from-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Read the password from this file (one trailing newline removed); with any form.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from stdin (one trailing newline removed); with any form.",
)
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
    password_from_file: str | None,
    password_stdin: bool,
    conn_schema: str | None,
    conn_port: int | None,
    conn_extra: str | None,
    conn_description: str | None,
) -> None:
    """Add a connection from a URI, JSON, or fields (fails if CONN_ID exists).

    The password is best given by --password-from-file PATH or --password-stdin (not in
    argv, where shell history and ps see it); it then replaces any password of the URI
    or JSON.
    """
    from ketch.authoring.connection import Connection
    from ketch.cli.variables import STDIN, read_text_input

    password_sources = [
        name
        for name, given in (
            ("--conn-password", conn_password is not None),
            ("--password-from-file", password_from_file is not None),
            ("--password-stdin", password_stdin),
        )
        if given
    ]
    if len(password_sources) > 1:
        raise click.UsageError(f"give one of {', '.join(password_sources)}, not several")
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
    read_password = None
    if password_from_file is not None or password_stdin:
        read_password = read_text_input(password_from_file or STDIN, "the password")
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
    if read_password is not None:
        conn.password = read_password
    get_backend().add_connection(conn)
    click.echo(f"connection {conn_id} added")


@connections.command("delete")
@click.argument("conn_id")
def connections_delete(conn_id: str) -> None:
    """Delete a connection."""
    get_backend().delete_connection(conn_id)
    click.echo(f"connection {conn_id} deleted")


@connections.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--overwrite/--no-overwrite", default=True, show_default=True)
def connections_import(file: Path, overwrite: bool) -> None:
    """Import Airflow's connections JSON (conn_id -> fields or URI); all or nothing."""
    count = get_backend().import_connections(read_json_file(file), overwrite=overwrite)
    click.echo(f"{count} connections imported from {file}")


@connections.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def connections_export(file: Path) -> None:
    """Write every connection to FILE in Airflow's JSON format (passwords in clear)."""
    data = get_backend().export_connections()
    write_json_file(file, data)
    click.echo(f"{len(data)} connections exported to {file}")
