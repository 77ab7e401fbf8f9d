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


def may_read(principal: Principal, api_path: str) -> bool:
    """May the principal GET this API resource (variables, pools: op; tokens: admin)?"""
    return may(principal, "GET", api_path)


def may_write(principal: Principal, api_path: str) -> bool:
    return may(principal, "PUT", api_path)


# The main menu: (page, label, the API resource whose read the page needs).
_MENU = (
    ("/dags", "DAGs", "/api/v1/dags"),
    ("/variables", "Variables", "/api/v1/variables"),
    ("/connections", "Connections", "/api/v1/connections"),
    ("/pools", "Pools", "/api/v1/pools"),
    ("/tokens", "API tokens", "/api/v1/tokens"),
    ("/audit", "Audit log", "/api/v1/auditLog"),
    ("/health", "Health", "/api/v1/dags"),
)


def menu(principal: Principal) -> list[tuple[str, str]]:
    """The pages of the main menu this principal's role may open."""
    return [(href, label) for href, label, api in _MENU if may_read(principal, api)]
