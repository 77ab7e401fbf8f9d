"""What every command module of :mod:`ketch.cli` shares: errors, settings, the database
session, option and value parsing, and output formatting.

Only click and the standard library are imported at module level (``ketch task run``
imports this module too); everything else is imported by the function that needs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from ketch.config import Settings


class CliError(click.ClickException):
    """An error the user can act on: printed as one line on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"ketch: {self.format_message()}", err=True)


# --- settings and the database ---------------------------------------------------------------


def load_settings() -> Settings:
    """The settings; a bad one is one line per problem (``ketch: KETCH__CORE__PARALLELISM=abc:
    [core] parallelism: ...``), exit code 1. Unknown keys are warned about, on stderr."""
    from ketch.config import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as exc:
        raise CliError("\nketch: ".join(exc.problems)) from exc


def reachable_engine(settings: Settings) -> Engine:
    from ketch.db.engine import DatabaseUnavailable, DatabaseUrlError, check_connection, get_engine

    try:
        engine = get_engine(settings.database_url)
    except DatabaseUrlError as exc:
        raise CliError(str(exc)) from exc
    try:
        check_connection(engine)
    except DatabaseUnavailable as exc:
        raise CliError(str(exc)) from exc
    return engine


def require_current_schema(engine: Engine) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from ketch.db.migrate import alembic_config

    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads = set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())
    if not current:
        raise CliError("the metadata database has no ketch schema yet: run `ketch db migrate`")
    if current != heads:
        raise CliError("the metadata database schema is out of date: run `ketch db migrate`")


def migrated_engine(settings: Settings) -> Engine:
    """For commands that start servers: reach the database and bring its schema up to date."""
    from ketch.db.engine import DatabaseUnavailable
    from ketch.db.migrate import migrate

    engine = reachable_engine(settings)
    try:
        migrate(engine)
    except DatabaseUnavailable as exc:
        raise CliError(str(exc)) from exc
    return engine


@contextmanager
def db_session() -> Iterator[Session]:
    """A session on a reachable, migrated database; commits on success. Errors of user
    actions (unknown DAG, invalid conf...) become one-line CLI errors."""
    from ketch import operations
    from ketch.db.engine import session_scope
    from ketch.exceptions import ParamValidationError

    engine = reachable_engine(load_settings())
    require_current_schema(engine)
    try:
        with session_scope(engine) as session:
            yield session
    except (operations.OperationError, ParamValidationError) as exc:
        raise CliError(str(exc)) from exc


# --- values the user gives -------------------------------------------------------------------


def parse_datetime(field: str, value: str | None) -> datetime | None:
    """ISO 8601; a value without a timezone is taken as UTC (as Airflow's CLI does)."""
    if value is None:
        return None
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CliError(f"{field}: not an ISO 8601 date/time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_conf(conf: str | None) -> dict[str, Any]:
    if conf is None:
        return {}
    try:
        parsed = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise CliError(f"--conf is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise CliError("--conf must be a JSON object")
    return parsed


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CliError(f"{path}: no such file") from exc
    except ValueError as exc:
        raise CliError(f"{path}: not valid JSON: {exc}") from exc


def write_json_file(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


# --- output ----------------------------------------------------------------------------------


def output_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Aligned columns for people, or JSON for scripts.",
    )(func)


def emit(output: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as JSON (every field) or as a table of ``columns``."""
    if output == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    from tabulate import tabulate

    table = [[_cell(row.get(c)) for c in columns] for row in rows]
    click.echo(tabulate(table, headers=list(columns), tablefmt="simple"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def short_time(value: Any) -> str | None:
    """A stored ISO datetime shortened for a table cell (seconds, no offset when UTC)."""
    if not value:
        return None
    text = str(value)
    return text[:19].replace("T", " ") + ("" if text.endswith(("+00:00", "Z")) else text[19:])


def error_line(text: str) -> str:
    """The last non-blank line of an error (a traceback's exception line)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
