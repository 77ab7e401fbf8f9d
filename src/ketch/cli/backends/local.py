"""The database backend: :mod:`ketch.operations` and :mod:`ketch.variables.store`, with rows
built by the REST API's own response models so both backends print the same.

Imported only when a command uses the database, so its imports may be heavy.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click
from pydantic import BaseModel

from ketch import operations
from ketch.api.schemas.dag_runs import DagRunResponse
from ketch.api.schemas.dags import DagResponse, TaskResponse
from ketch.api.schemas.import_errors import ImportErrorResponse
from ketch.api.schemas.pools import PoolResponse
from ketch.api.schemas.task_instances import TaskInstanceResponse
from ketch.api.schemas.xcom import XComResponseNative
from ketch.auth import api_tokens
from ketch.cli._common import CliError, db_session, load_settings
from ketch.cli.backends import Row
from ketch.variables import store
from ketch.variables.models_api import MASK, VariableResponse, mask_extra

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ketch.authoring.connection import Connection


def _dump(model: BaseModel) -> Row:
    """A response model as the REST API sends it."""
    return model.model_dump(mode="json")


@contextmanager
def dag_session() -> Iterator[Session]:
    """:func:`db_session` for commands that name a DAG: "DAG 'x' not found" also says when
    DAG files failed to import, and names the one that may define it."""
    with db_session() as session:
        try:
            yield session
        except operations.DagNotFound as exc:
            from ketch.dag_processing.hints import import_error_hint

            try:
                folder = load_settings().core.dags_folder
                hint = import_error_hint(session, exc.dag_id, dags_folder=folder)
            except Exception:  # the hint must not hide the error itself
                hint = ""
            raise CliError(f"{exc}{hint}") from exc


def ti_rows(session: Session, tis: Sequence[Any]) -> list[Row]:
    """Task instances as the REST API lists them: each with its tries (one query for all)."""
    tries = operations.tries_by_task_instance(session, tis)
    return [_dump(TaskInstanceResponse.from_model(ti, tries[ti.id])) for ti in tis]


def connection_row(conn: Connection) -> Row:
    """A connection as the CLI shows it: ``conn_id`` and Airflow's fields."""
    return {"conn_id": conn.conn_id, **conn.to_dict()}


class LocalBackend:
    remote = False

    # --- DAGs and runs --------------------------------------------------------------------

    def list_dags(self, *, paused: bool | None, tags: Sequence[str]) -> list[Row]:
        with db_session() as session:
            page = operations.list_dags(session, paused=paused, tags=list(tags) or None)
            return [_dump(DagResponse.from_model(s.dag, s.last_run)) for s in page.items]

    def get_dag(self, dag_id: str) -> Row:
        with dag_session() as session:
            return _dump(DagResponse.from_model(operations.get_dag(session, dag_id)))

    def set_paused(self, dag_id: str, paused: bool) -> Row:
        with dag_session() as session:
            dag = operations.set_paused(session, dag_id, paused)
            return _dump(DagResponse.from_model(dag))

    def list_import_errors(self) -> list[Row]:
        with db_session() as session:
            page = operations.list_import_errors(session)
            return [_dump(ImportErrorResponse.from_model(e)) for e in page.items]

    def list_runs(self, dag_id: str, *, state: str | None, limit: int) -> list[Row]:
        with dag_session() as session:
            page = operations.list_dag_runs(session, dag_id, state=state, limit=limit)
            return [_dump(DagRunResponse.from_model(r)) for r in page.items]

    def trigger(
        self,
        dag_id: str,
        *,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_id: str | None,
    ) -> Row:
        with dag_session() as session:
            run = operations.trigger_dag(
                session, dag_id, conf=conf, logical_date=logical_date, run_id=run_id
            )
            return _dump(DagRunResponse.from_model(run))

    def get_run(self, dag_id: str, run_id: str) -> Row:
        with dag_session() as session:
            run = operations.get_dag_run(session, dag_id, run_id)
            return _dump(DagRunResponse.from_model(run))

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> Row:
        with dag_session() as session:
            run = operations.set_dag_run_state(session, dag_id, run_id, state)
            return _dump(DagRunResponse.from_model(run))

    # --- tasks and task instances ---------------------------------------------------------

    def list_tasks(self, dag_id: str) -> list[Row]:
        with dag_session() as session:
            serialized = operations.serialized_dag(operations.get_dag(session, dag_id))
        return [_dump(TaskResponse.from_task(t, serialized)) for t in serialized.tasks.values()]

    def list_task_instances(self, dag_id: str, run_id: str) -> list[Row]:
        with dag_session() as session:
            return ti_rows(session, operations.list_task_instances(session, dag_id, run_id))

    def get_task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Row:
        with dag_session() as session:
            ti = operations.get_task_instance(session, dag_id, run_id, task_id, map_index)
            tries = operations.list_task_instance_tries(session, ti)
            return _dump(TaskInstanceResponse.from_model(ti, tries))

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
    ) -> list[Row]:
        with dag_session() as session:
            tis = operations.clear_task_instances(
                session,
                dag_id,
                run_id,
                list(task_ids) or None,
                include_downstream=downstream,
                include_upstream=upstream,
                only_failed=only_failed,
                dry_run=dry_run,
            )
            rows = ti_rows(session, tis)
            if dry_run:
                session.rollback()
            return rows

    def mark_task_instance(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        state: str,
        *,
        downstream: bool,
        map_index: int | None = None,
    ) -> list[Row]:
        with dag_session() as session:
            operations.check_task_instance(session, dag_id, run_id, task_id, map_index)
            altered = operations.set_task_instance_state(
                session,
                dag_id,
                run_id,
                task_id,
                state,
                include_downstream=downstream,
                map_index=map_index,
            )
            return ti_rows(session, altered)

    def get_xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1
    ) -> Row:
        with dag_session() as session:
            entry = operations.get_xcom_entry(
                session, dag_id, run_id, task_id, key, map_index=map_index
            )
            return _dump(XComResponseNative.from_entry(entry))

    def _log_try(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int
    ) -> Any:
        """The try's key, whether it may still write, and its state (for messages)."""
        from ketch.executors.base import TryKey
        from ketch.states import TaskInstanceState

        with db_session() as session:
            ti = operations.get_task_instance(session, dag_id, run_id, task_id, map_index)
            current = ti.try_number == try_number
            state = ti.state if current else "ended"
        live = current and state in (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING)
        return TryKey(dag_id, run_id, task_id, try_number, map_index), live, state

    def _log_reader(self) -> Any:
        from ketch.logs.access import LogAccess

        return LogAccess(load_settings()).reader()

    def read_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> bytes:
        from ketch.logs.reader import LogUnavailable

        key, live, state = self._log_try(dag_id, run_id, task_id, try_number, map_index)
        reader = self._log_reader()
        try:
            source = reader.best(key, live, state=state)
        except LogUnavailable as exc:
            raise CliError(str(exc)) from None
        return b"".join(reader.pieces(source))

    def follow_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> Iterator[bytes]:
        """The log as it grows (a queued try: once it starts), until the try is over and
        all of it was read."""
        from ketch.logs.reader import Waiting

        key, _live, _state = self._log_try(dag_id, run_id, task_id, try_number, map_index)
        for step in self._log_reader().follow(
            key, 0, self._try_state(dag_id, run_id, task_id, try_number, map_index)
        ):
            if isinstance(step, str):
                return
            if isinstance(step, Waiting):  # why the pod has not started: not part of the log
                click.echo(f"waiting: {step.reason}", err=True)
            elif step:
                yield step

    def _try_state(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int
    ) -> Any:
        def check() -> str | None:
            try:
                _key, live, state = self._log_try(dag_id, run_id, task_id, try_number, map_index)
            except operations.NotFound:
                return "removed"  # the run was deleted: nothing more will be written
            return None if live else (state or "none")

        return check

    # --- pools ----------------------------------------------------------------------------

    def list_pools(self) -> list[Row]:
        with db_session() as session:
            return [_dump(PoolResponse.from_stats(p)) for p in operations.list_pools(session)]

    def pool_exists(self, name: str) -> bool:
        from ketch.db.models import Pool

        with db_session() as session:
            return session.get(Pool, name) is not None

    def set_pool(self, name: str, slots: int, description: str | None) -> Row:
        with db_session() as session:
            stats = operations.set_pool(session, name, slots, description)
            return _dump(PoolResponse.from_stats(stats))

    def delete_pool(self, name: str) -> None:
        with db_session() as session:
            operations.delete_pool(session, name)

    # --- variables ------------------------------------------------------------------------

    def list_variables(self) -> list[Row]:
        with db_session() as session:
            records = store.list_variables(session, load_settings())
        return [_dump(VariableResponse.from_record(r)) for r in records]

    def get_variable(self, key: str) -> Row | None:
        with db_session() as session:
            try:
                return store.get_variable(session, load_settings(), key).to_dict(reveal=True)
            except store.VariableNotFound:
                return None

    def set_variable(
        self, key: str, value: str, *, description: str | None, sensitive: bool | None
    ) -> None:
        with db_session() as session:
            store.set_variable(
                session,
                load_settings(),
                key,
                value,
                description=description,
                is_sensitive=sensitive,
                actor="cli",
            )

    def delete_variable(self, key: str) -> None:
        with db_session() as session:
            store.delete_variable(session, key, actor="cli")

    def import_variables(self, data: Any) -> int:
        with db_session() as session:
            return store.import_variables(session, load_settings(), data, actor="cli")

    def export_variables(self) -> dict[str, Any]:
        with db_session() as session:
            return store.export_variables(session, load_settings())

    def variable_sync_status(self) -> list[Row]:
        from ketch.api.rest.variable_sync import get_sync_status

        with db_session() as session:
            body = get_sync_status(session, load_settings())
        return [_dump(s) for s in body.sources]

    # --- connections ----------------------------------------------------------------------

    def list_connections(self) -> list[Row]:
        with db_session() as session:
            conns = store.list_connections(session, load_settings())
        rows = [connection_row(c) for c in conns]
        for row in rows:  # as the REST API shows them
            row["password"] = MASK if row["password"] else None
            row["extra"] = mask_extra(row["extra"])
        return rows

    def get_connection(self, conn_id: str) -> Row:
        with db_session() as session:
            return connection_row(store.get_connection(session, load_settings(), conn_id))

    def add_connection(self, conn: Connection) -> None:
        with db_session() as session:
            store.set_connection(session, load_settings(), conn, overwrite=False)

    def delete_connection(self, conn_id: str) -> None:
        with db_session() as session:
            store.delete_connection(session, conn_id)

    def import_connections(self, data: Any, *, overwrite: bool) -> int:
        with db_session() as session:
            return store.import_connections(session, load_settings(), data, overwrite=overwrite)

    def export_connections(self) -> dict[str, Any]:
        with db_session() as session:
            return store.export_connections(session, load_settings())

    # --- API tokens -----------------------------------------------------------------------

    def create_token(
        self, *, name: str, role: str, expires_in: timedelta | None, scopes: Sequence[str]
    ) -> tuple[Row, str]:
        with db_session() as session:
            token, secret = api_tokens.create_token(
                session,
                name=name,
                role=role,
                expires_in=expires_in,
                scopes=scopes,
                created_by=_cli_actor(),
            )
            return token_row(token), secret

    def list_tokens(self) -> list[Row]:
        with db_session() as session:
            return [token_row(t) for t in api_tokens.list_tokens(session)]

    def revoke_token(self, token_id: int) -> Row | None:
        with db_session() as session:
            token = api_tokens.revoke_token(session, token_id, revoked_by=_cli_actor())
            return token_row(token)


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def token_row(token: Any) -> Row:
    """An API token as ``GET /api/v1/tokens`` shows it (never the secret)."""
    from ketch.api.rest.tokens import TokenResponse

    return _dump(TokenResponse.of(token))
