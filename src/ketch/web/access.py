"""What the signed-in principal may do, asked of the same policy the REST API enforces.

Pages show an action only to a role the API would let do it; the API still decides
(a viewer who posts anyway gets its 403).
"""

from __future__ import annotations

from urllib.parse import quote

from ketch.auth import policy, roles
from ketch.auth.principal import Principal


def may(principal: Principal, method: str, path: str) -> bool:
    needed = policy.required_role(method, path)
    return needed is None or roles.at_least(principal.role, needed)


def api_dag_path(dag_id: str) -> str:
    return f"/api/v1/dags/{quote(dag_id, safe='')}"


def may_pause(principal: Principal, dag_id: str) -> bool:
    return may(principal, "PATCH", api_dag_path(dag_id))


def may_trigger(principal: Principal, dag_id: str) -> bool:
    return may(principal, "POST", api_dag_path(dag_id) + "/dagRuns")


def api_run_path(dag_id: str, run_id: str) -> str:
    return f"{api_dag_path(dag_id)}/dagRuns/{quote(run_id, safe='')}"


def api_ti_path(dag_id: str, run_id: str, task_id: str) -> str:
    return f"{api_run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}"


def may_mark_run(principal: Principal, dag_id: str, run_id: str) -> bool:
    return may(principal, "PATCH", api_run_path(dag_id, run_id))


def may_mark_task(principal: Principal, dag_id: str, run_id: str, task_id: str) -> bool:
    return may(principal, "PATCH", api_ti_path(dag_id, run_id, task_id))


def may_clear(principal: Principal, dag_id: str) -> bool:
    return may(principal, "POST", api_dag_path(dag_id) + "/clearTaskInstances")
