"""Where the state commands act: the metadata database here, or a ketch web server's REST API.

Each command is written once against :class:`Backend`. :class:`~.local.LocalBackend`
calls :mod:`ketch.operations` and :mod:`ketch.variables.store` on the database (as the
REST API does); :class:`~.remote.RemoteBackend` calls ``/api/v1`` with httpx and a
bearer token, so a user needs no database credentials. Rows are the REST API's
response bodies (the :mod:`ketch.api.schemas` models dumped as JSON) in both, so the
output of a command is the same whichever backend served it.

The remote backend is chosen by ``KETCH_API_URL`` (and ``KETCH_API_TOKEN``) in the
environment or ``ketch --api-url URL --token TOKEN``; without a URL it is the database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import click

from ketch.cli._common import CliError

if TYPE_CHECKING:
    from ketch.authoring.connection import Connection

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """The ketch web server to talk to; ``token`` is never printed."""

    url: str
    token: str | None

    @property
    def shown_url(self) -> str:
        """The URL for messages: without any user:password@ part."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def __repr__(self) -> str:
        return f"RemoteTarget(url={self.shown_url!r}, token={'***' if self.token else None})"


class Backend(Protocol):
    """What the state commands need. Missing things raise :class:`CliError` with the
    message the user sees (the operation's, or the REST API's ``detail``)."""

    remote: bool

    # DAGs and runs
    def list_dags(self, *, paused: bool | None, tags: Sequence[str]) -> list[Row]: ...
    def get_dag(self, dag_id: str) -> Row: ...
    def set_paused(self, dag_id: str, paused: bool) -> Row: ...
    def list_import_errors(self) -> list[Row]: ...
    def list_runs(self, dag_id: str, *, state: str | None, limit: int) -> list[Row]: ...
    def trigger(
        self,
        dag_id: str,
        *,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_id: str | None,
    ) -> Row: ...
    def get_run(self, dag_id: str, run_id: str) -> Row: ...
    def set_run_state(self, dag_id: str, run_id: str, state: str) -> Row: ...

    # tasks and task instances
    def list_tasks(self, dag_id: str) -> list[Row]: ...
    def list_task_instances(self, dag_id: str, run_id: str) -> list[Row]: ...
    def get_task_instance(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> Row: ...
    def clear_task_instances(
        self,
        dag_id: str,
        run_id: str,
        task_ids: Sequence[str],
        *,
        downstream: bool,
        upstream: bool,
        only_failed: bool,
        dry_run: bool,
    ) -> list[Row]: ...
    def mark_task_instance(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        state: str,
        *,
        downstream: bool,
        map_index: int | None = None,
    ) -> list[Row]: ...
    def get_xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1
    ) -> Row: ...
    def read_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> bytes: ...
    def follow_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> Iterator[bytes]: ...

    # pools
    def list_pools(self) -> list[Row]: ...
    def pool_exists(self, name: str) -> bool: ...
    def set_pool(self, name: str, slots: int, description: str | None) -> Row: ...
    def delete_pool(self, name: str) -> None: ...

    # variables
    def list_variables(self) -> list[Row]: ...
    def get_variable(self, key: str) -> Row | None: ...
    def set_variable(
        self, key: str, value: str, *, description: str | None, sensitive: bool | None
    ) -> None: ...
    def delete_variable(self, key: str) -> None: ...
    def import_variables(self, data: Any) -> int: ...
    def export_variables(self) -> dict[str, Any]: ...
    def variable_sync_status(self) -> list[Row]: ...

    # connections (rows: ``conn_id`` and Airflow's fields)
    def list_connections(self) -> list[Row]: ...
    def get_connection(self, conn_id: str) -> Row: ...
    def add_connection(self, conn: Connection) -> None: ...
    def delete_connection(self, conn_id: str) -> None: ...
    def import_connections(self, data: Any, *, overwrite: bool) -> int: ...
    def export_connections(self) -> dict[str, Any]: ...

    # API tokens
    def create_token(
        self, *, name: str, role: str, expires_in: timedelta | None, scopes: Sequence[str]
    ) -> tuple[Row, str]: ...
    def list_tokens(self) -> list[Row]: ...
    def revoke_token(self, token_id: int) -> Row | None: ...


def remote_target() -> RemoteTarget | None:
    """The server given by ``--api-url`` / ``KETCH_API_URL``, or None for the database.

    Checked here, when a command needs it, not when the group starts: ``ketch task run``
    and the server commands never look at it."""
    from urllib.parse import urlsplit

    ctx = click.get_current_context(silent=True)
    given = ctx.find_object(RemoteTarget) if ctx is not None else None
    if given is None or not given.url.strip():
        return None
    url = given.url.strip().rstrip("/").removesuffix("/api/v1").rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = RemoteTarget(url, None).shown_url if parts is not None else "(not a URL)"
        raise CliError(f"KETCH_API_URL must look like https://ketch.example.com, not {shown}")
    return RemoteTarget(url, (given.token or "").strip() or None)


def get_backend() -> Backend:
    target = remote_target()
    if target is not None:
        from ketch.cli.backends.remote import RemoteBackend

        return RemoteBackend(target)
    from ketch.cli.backends.local import LocalBackend

    return LocalBackend()


def require_database(what: str) -> None:
    """Refuse a command that only works on the database when a server is configured."""
    target = remote_target()
    if target is not None:
        raise CliError(
            f"{what} works on the metadata database and has no REST API: it cannot run "
            f"through KETCH_API_URL={target.shown_url} (unset it, or leave out --api-url, and run "
            "it where the database is reachable)"
        )
