"""The REST backend: each command's calls to ``/api/v1`` of a ketch web server.

The requests, paging and error wording are :mod:`.http`'s. What the REST API never
returns (values of sensitive variables, connection passwords, the values of a
connection's sensitive extra keys) is never guessed: commands that need it say so
instead of printing a mask as if it were the secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from ketch.cli._common import CliError
from ketch.cli.backends import RemoteTarget, Row
from ketch.cli.backends.http import ApiClient
from ketch.cli.backends.http import segment as _q

if TYPE_CHECKING:
    from ketch.authoring.connection import Connection


class RemoteBackend:
    remote = True

    def __init__(self, target: RemoteTarget) -> None:
        self._api = ApiClient(target)

    # --- DAGs and runs --------------------------------------------------------------------

    def list_dags(self, *, paused: bool | None, tags: Sequence[str]) -> list[Row]:
        return self._api.all("/dags", "dags", {"paused": paused, "tags": list(tags) or None})

    def get_dag(self, dag_id: str) -> Row:
        return dict(self._api.json("GET", f"/dags/{_q(dag_id)}"))

    def set_paused(self, dag_id: str, paused: bool) -> Row:
        return dict(self._api.json("PATCH", f"/dags/{_q(dag_id)}", body={"is_paused": paused}))

    def list_import_errors(self) -> list[Row]:
        return self._api.all("/importErrors", "import_errors")

    def list_runs(self, dag_id: str, *, state: str | None, limit: int) -> list[Row]:
        path = f"/dags/{_q(dag_id)}/dagRuns"
        return self._api.all(path, "dag_runs", {"state": state}, limit=max(limit, 0))

    def trigger(
        self,
        dag_id: str,
        *,
        conf: dict[str, Any],
        logical_date: datetime | None,
        run_id: str | None,
    ) -> Row:
        body: dict[str, Any] = {"conf": conf}
        if logical_date is not None:
            body["logical_date"] = logical_date.isoformat()
        if run_id is not None:
            body["dag_run_id"] = run_id
        return dict(self._api.json("POST", f"/dags/{_q(dag_id)}/dagRuns", body=body))

    def get_run(self, dag_id: str, run_id: str) -> Row:
        return dict(self._api.json("GET", f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}"))

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> Row:
        path = f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}"
        return dict(self._api.json("PATCH", path, body={"state": state}))

    # --- tasks and task instances ---------------------------------------------------------

    def list_tasks(self, dag_id: str) -> list[Row]:
        return list(self._api.json("GET", f"/dags/{_q(dag_id)}/tasks")["tasks"])

    def list_task_instances(self, dag_id: str, run_id: str) -> list[Row]:
        path = f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances"
        return list(self._api.json("GET", path)["task_instances"])

    def get_task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Row:
        path = f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
        if map_index >= 0:
            path += f"/{map_index}"
        return dict(self._api.json("GET", path))

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
        body = {
            "dag_run_id": run_id,
            "task_ids": list(task_ids) or None,
            "include_downstream": downstream,
            "include_upstream": upstream,
            "only_failed": only_failed,  # the API defaults both to true: always say
            "dry_run": dry_run,
        }
        path = f"/dags/{_q(dag_id)}/clearTaskInstances"
        return list(self._api.json("POST", path, body=body)["task_instances"])

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
        path = f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
        if map_index is not None:
            path += f"/{map_index}"
        body = {"new_state": state, "include_downstream": downstream}
        return list(self._api.json("PATCH", path, body=body)["task_instances"])

    def get_xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1
    ) -> Row:
        path = (
            f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
            f"/xcomEntries/{_q(key)}"
        )
        return dict(self._api.json("GET", path, params={"map_index": map_index}))

    def _log_path(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        return (
            f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/logs/{try_number}"
        )

    def read_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> bytes:
        path = self._log_path(dag_id, run_id, task_id, try_number)
        return self._api.request("GET", path, params={"map_index": map_index}).content

    def follow_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> Iterator[bytes]:
        """The ``event: log`` messages of the API's Server-Sent Events stream until ``end``."""
        path = self._log_path(dag_id, run_id, task_id, try_number)
        params = {"follow": "true", "map_index": map_index}
        for event, data in self._api.events(path, params):
            if event == "end":
                return
            if event == "log":
                yield data.encode()
            elif event == "waiting":  # why the pod has not started: not part of the log
                click.echo(f"waiting: {data}", err=True)

    # --- pools ----------------------------------------------------------------------------

    def list_pools(self) -> list[Row]:
        return self._api.all("/pools", "pools")

    def pool_exists(self, name: str) -> bool:
        return self._api.request("GET", f"/pools/{_q(name)}", allow=(404,)).status_code != 404

    def set_pool(self, name: str, slots: int, description: str | None) -> Row:
        body = {"slots": slots, "description": description}
        return dict(self._api.json("PUT", f"/pools/{_q(name)}", body=body))

    def delete_pool(self, name: str) -> None:
        self._api.request("DELETE", f"/pools/{_q(name)}")

    # --- variables ------------------------------------------------------------------------

    def list_variables(self) -> list[Row]:
        return self._api.all("/variables", "variables")

    def get_variable(self, key: str) -> Row | None:
        response = self._api.request("GET", f"/variables/{_q(key)}", allow=(404,))
        return None if response.status_code == 404 else dict(response.json())

    def set_variable(
        self, key: str, value: str, *, description: str | None, sensitive: bool | None
    ) -> None:
        body = {"value": value, "description": description, "is_sensitive": sensitive}
        self._api.request("PUT", f"/variables/{_q(key)}", body=body)

    def delete_variable(self, key: str) -> None:
        self._api.request("DELETE", f"/variables/{_q(key)}")

    def import_variables(self, data: Any) -> int:
        return int(self._api.json("POST", "/variables/import", body=data)["imported"])

    def export_variables(self) -> dict[str, Any]:
        """Airflow's format, as the database backend writes it; refused when a value is
        sensitive (the REST API never returns those)."""
        rows = self.list_variables()
        _refuse_hidden([r["key"] for r in rows if r["is_sensitive"]], "sensitive variables")
        exported: dict[str, Any] = {}
        for row in rows:
            try:
                value: Any = json.loads(row["value"])
            except ValueError:
                value = row["value"]
            description = row.get("description")
            exported[row["key"]] = (
                {"value": value, "description": description} if description else value
            )
        return exported

    def variable_sync_status(self) -> list[Row]:
        return list(self._api.json("GET", "/variables/syncStatus")["sources"])

    # --- connections ----------------------------------------------------------------------

    def list_connections(self) -> list[Row]:
        return [_connection_row(r) for r in self._api.all("/connections", "connections")]

    def get_connection(self, conn_id: str) -> Row:
        return _connection_row(self._api.json("GET", f"/connections/{_q(conn_id)}"))

    def add_connection(self, conn: Connection) -> None:
        body = {"connection_id": conn.conn_id, **conn.to_dict()}
        self._api.request("POST", "/connections", body=body)

    def delete_connection(self, conn_id: str) -> None:
        self._api.request("DELETE", f"/connections/{_q(conn_id)}")

    def import_connections(self, data: Any, *, overwrite: bool) -> int:
        if not overwrite:
            raise CliError(
                "--no-overwrite is not available through the REST API "
                "(POST /api/v1/connections/import replaces existing connections)"
            )
        return int(self._api.json("POST", "/connections/import", body=data)["imported"])

    def export_connections(self) -> dict[str, Any]:
        rows = self.list_connections()
        _refuse_hidden(
            [r["conn_id"] for r in rows if r["password"] or hides_extra(r["extra"])],
            "connections with a password or sensitive extra fields",
        )
        return {row["conn_id"]: {k: v for k, v in row.items() if k != "conn_id"} for row in rows}

    # --- API tokens -----------------------------------------------------------------------

    def create_token(
        self, *, name: str, role: str, expires_in: timedelta | None, scopes: Sequence[str]
    ) -> tuple[Row, str]:
        days = None
        if expires_in is not None:
            if expires_in % timedelta(days=1):
                raise CliError(
                    "--expires: the REST API takes whole days (e.g. 90d) or never; "
                    "hours and minutes only with database access"
                )
            days = expires_in // timedelta(days=1)
        body = {"name": name, "role": role, "expires_in_days": days, "scopes": list(scopes)}
        created = dict(self._api.json("POST", "/tokens", body=body))
        secret = created.pop("token")
        return created, secret

    def list_tokens(self) -> list[Row]:
        return list(self._api.json("GET", "/tokens")["tokens"])

    def revoke_token(self, token_id: int) -> Row | None:
        self._api.request("DELETE", f"/tokens/{_q(token_id)}")
        return next((t for t in self.list_tokens() if t["id"] == token_id), None)


def _connection_row(body: Row) -> Row:
    """``GET /api/v1/connections`` -> the CLI's row (``conn_id`` and Airflow's fields)."""
    from ketch.authoring.connection import FIELDS

    return {"conn_id": body["connection_id"], **{name: body.get(name) for name in FIELDS}}


MASK = "***"


def hides_extra(extra: Any) -> bool:
    """True when a connection's ``extra`` as the REST API returns it has values hidden as
    ``***`` under a sensitive key (see :mod:`ketch.variables.models_api`)."""
    from ketch.worker.secrets_mask import looks_sensitive

    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            return False

    def hidden(value: Any, sensitive: bool) -> bool:
        if isinstance(value, dict):
            return any(
                hidden(item, sensitive or looks_sensitive(str(key))) for key, item in value.items()
            )
        if isinstance(value, list):
            return any(hidden(item, sensitive) for item in value)
        return sensitive and value == MASK

    return hidden(extra, False)


def _refuse_hidden(names: list[str], what: str) -> None:
    if names:
        raise CliError(
            f"cannot export through the REST API: it never returns the secrets of {what} "
            f"({', '.join(names)}); export with database access instead"
        )
