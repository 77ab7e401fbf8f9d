"""Which role each route needs: Airflow's four roles, decided by rule, deny by default.

Reads (GET) need ``viewer``; running things (trigger, clear, mark, pause) needs
``user``; variables, connections and pools, read or written, need ``op`` (as in
Airflow, where they belong to the Op role); tokens, users and the audit log need
``admin``. A state-changing route that no rule names needs ``admin``, so a new route
is never open by accident.
"""

from __future__ import annotations

from ketch.config import Role

OPEN_PATHS = frozenset({"/api/v1/health"})
"""Routes anyone may call (liveness probes)."""

METRICS_PATH = "/metrics"

_ADMIN_PREFIXES = ("/api/v1/tokens", "/api/v1/users", "/api/v1/auditLog")
_OP_PREFIXES = ("/api/v1/variables", "/api/v1/connections", "/api/v1/pools")
_USER_ACTIONS = frozenset(
    {
        ("PATCH", "/api/v1/dags/{dag_id}"),
        ("POST", "/api/v1/dags/{dag_id}/dagRuns"),
        ("PATCH", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}"),
        ("PATCH", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}"),
        ("POST", "/api/v1/dags/{dag_id}/clearTaskInstances"),
    }
)


def required_role(method: str, route_path: str) -> Role | None:
    """The weakest role allowed to call ``method route_path``; None: open to anyone."""
    if route_path in OPEN_PATHS:
        return None
    if route_path.startswith(_ADMIN_PREFIXES):
        return "admin"
    if route_path.startswith(_OP_PREFIXES):
        return "op"
    if method in ("GET", "HEAD"):
        return "viewer"
    if (method, route_path) in _USER_ACTIONS:
        return "user"
    return "admin"
