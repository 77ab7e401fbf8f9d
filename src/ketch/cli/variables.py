"""``ketch variables`` (list, get, set, delete, import, export, sync) and
``ketch rotate-fernet-key``.

The commands work on the database through :mod:`ketch.variables.store`, or through
the REST API (:mod:`ketch.cli.backends`). Files are Airflow's formats, so an existing
``variables.json`` imports unchanged. Values of sensitive variables are shown as
``***`` by ``list``; ``get`` prints the value (it is what the user asked for), which the
REST API never returns for a sensitive variable, so ``get`` and ``export`` of those
need database access. ``sync --once`` (database only) and ``sync-status`` run and show
the sync of :mod:`ketch.variables.sync`; ``rotate-fernet-key`` is database only.

``set`` takes the value from argv, or, so that a secret stays out of the shell history
and ``ps``, from stdin (``ketch variables set KEY -``) or a file (``--from-file PATH``),
one trailing newline removed unless ``--keep-newline``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from ketch.cli._common import (
    CliError,
    db_session,
    emit,
    load_settings,
    output_option,
    reachable_engine,
    read_json_file,
    require_current_schema,
    write_json_file,
)
from ketch.cli.backends import get_backend, require_database


@click.group()
def variables() -> None:
    """Variables: key -> value, encrypted at rest, read by tasks with Variable.get."""


@variables.command("list")
@output_option
def variables_list(output: str) -> None:
    """Every variable (values of sensitive ones hidden) and who owns it."""
    rows = get_backend().list_variables()
    for row in rows:
        row["source"] = row["source"] or "(manual)"
    emit(output, rows, ("key", "value", "is_sensitive", "source", "description"))


@variables.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Parse the value as JSON and pretty-print.")
@click.option("--default", default=None, help="Print this when the variable does not exist.")
def variables_get(key: str, as_json: bool, default: str | None) -> None:
    """Print a variable's value."""
    backend = get_backend()
    row = backend.get_variable(key)
    if row is None:
        if default is None:
            raise CliError(f"variable {key!r} not found")
        value = default
    elif backend.remote and row["is_sensitive"]:
        raise CliError(
            f"variable {key!r} is sensitive: the REST API never returns its value "
            "(read it with database access, or from a task with Variable.get)"
        )
    else:
        value = row["value"]
    if as_json:
        try:
            value = json.dumps(json.loads(value), indent=2)
        except ValueError as exc:
            raise CliError(f"variable {key!r} is not JSON: {exc}") from exc
    click.echo(value)


STDIN = "-"


def read_text_input(path: str, what: str, *, keep_newline: bool = False) -> str:
    """The text of file ``path``, or of stdin for ``-``, without one trailing newline
    (LF or CRLF) unless ``keep_newline``: how a secret is given without putting it in
    argv."""
    source = "stdin" if path == STDIN else path
    try:
        if path == STDIN:
            if sys.stdin.isatty():
                click.echo(f"reading {what} from stdin (end with Ctrl-D)", err=True)
            raw = sys.stdin.buffer.read()
        else:
            raw = Path(path).read_bytes()
        text = raw.decode("utf-8")  # bytes as they are: no newline translation
    except UnicodeDecodeError as exc:
        raise CliError(f"cannot read {what} from {source}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise CliError(f"cannot read {what} from {source}: {exc.strerror or exc}") from exc
    if not keep_newline:
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
    return text


@variables.command("set")
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "--from-file",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Read the value from this file (- for stdin) instead of VALUE.",
)
@click.option(
    "--keep-newline",
    is_flag=True,
    help="Keep the trailing newline of a value read from stdin or a file.",
)
@click.option("--description", default=None, help="What the variable is for.")
@click.option(
    "--sensitive/--not-sensitive",
    default=None,
    help="Hide the value in listings and task logs (default: by key name, e.g. *password*).",
)
@click.option("--json", "as_json", is_flag=True, help="VALUE is JSON (checked, stored as text).")
def variables_set(
    key: str,
    value: str | None,
    from_file: str | None,
    keep_newline: bool,
    description: str | None,
    sensitive: bool | None,
    as_json: bool,
) -> None:
    """Create or update a variable (it becomes manual: no sync source owns it).

    VALUE may be - to read the value from stdin, or left out for --from-file PATH: a
    secret then stays out of the shell history. One trailing newline of what is read is
    removed unless --keep-newline.
    """
    if value is not None and from_file is not None:
        raise click.UsageError("give either VALUE or --from-file, not both")
    if value is None and from_file is None:
        raise click.UsageError("no value: give VALUE, - to read it from stdin, or --from-file PATH")
    if value is not None and value != STDIN and keep_newline:
        raise click.UsageError("--keep-newline is for a value read from stdin or a file")
    if value == STDIN or from_file is not None:
        value = read_text_input(from_file or STDIN, "the value", keep_newline=keep_newline)
    assert value is not None
    if as_json:
        try:
            json.loads(value)
        except ValueError as exc:
            raise CliError(f"VALUE is not valid JSON: {exc}") from exc
    get_backend().set_variable(key, value, description=description, sensitive=sensitive)
    click.echo(f"variable {key} set")


@variables.command("delete")
@click.argument("key")
def variables_delete(key: str) -> None:
    """Delete a variable."""
    get_backend().delete_variable(key)
    click.echo(f"variable {key} deleted")


@variables.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def variables_import(file: Path) -> None:
    """Import Airflow's variables.json (a flat JSON object); all or nothing."""
    count = get_backend().import_variables(read_json_file(file))
    click.echo(f"{count} variables imported from {file}")


@variables.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def variables_export(file: Path) -> None:
    """Write every variable to FILE in Airflow's format (values in clear: keep it safe)."""
    data = get_backend().export_variables()
    write_json_file(file, data)
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
@output_option
def variables_sync(once: bool, output: str) -> None:
    """Sync every configured source once (for CI/CD); exit 1 if a source failed."""
    from ketch.variables.sync import run_sync_once

    require_database("ketch variables sync --once")
    settings = load_settings()
    engine = reachable_engine(settings)
    require_current_schema(engine)
    statuses = run_sync_once(settings, engine)
    rows = _status_rows(statuses)
    emit(output, rows, _STATUS_COLUMNS)
    if any(row.get("ok") is False or ("ok" not in row and row.get("error")) for row in rows):
        raise SystemExit(1)


@variables.command("sync-status")
@output_option
def variables_sync_status(output: str) -> None:
    """Each source's last success, last error, current version and managed keys."""
    rows = get_backend().variable_sync_status()
    emit(output, rows, _STATUS_COLUMNS)


# --- key rotation --------------------------------------------------------------------------


@click.command("rotate-fernet-key")
def rotate_fernet_key() -> None:
    """Re-encrypt every variable and connection secret with the first [core] fernet_key.

    Put the new key first (``KETCH__CORE__FERNET_KEY=new,old``), run this, then drop
    the old key.
    """
    from ketch.variables import store

    require_database("ketch rotate-fernet-key")
    with db_session() as session:
        count = store.rotate_fernet_key(session, load_settings())
    click.echo(f"{count} values re-encrypted with the first fernet key")
