"""Which role each route needs: Airflow's four roles, decided by rule, deny by default.

Reads (GET) need ``viewer`` (task logs and XCom entries included: Airflow's Viewer
reads XComs too); running things (trigger, clear, mark, pause) needs
``user``; variables, connections and pools, read or written, need ``op`` (as in
Airflow, where they belong to the Op role); tokens, users and the audit log need
``admin``. A state-changing route that no rule names needs ``admin``, so a new route
is never open by accident.
"""

from __future__ import annotations

import re

from ketch.config import Role

OPEN_PATHS = frozenset({"/api/v1/health"})
"""Routes anyone may call (liveness probes)."""

METRICS_PATH = "/metrics"

_ADMIN_PREFIXES = ("/api/v1/tokens", "/api/v1/users", "/api/v1/auditLog")
_OP_PREFIXES = ("/api/v1/variables", "/api/v1/connections", "/api/v1/pools")
_SEGMENT = r"[^/]+"
# The changes a "user" may make, matched on the request path: FastAPI does not hand
# dependencies the full route template of a route inside included routers.
_USER_ACTIONS = tuple(
    (method, re.compile(pattern.replace("{}", _SEGMENT) + "$"))
    for method, pattern in (
        ("PATCH", "/api/v1/dags/{}"),  # pause, unpause
        ("POST", "/api/v1/dags/{}/dagRuns"),  # trigger
        ("PATCH", "/api/v1/dags/{}/dagRuns/{}"),  # mark a run
        ("PATCH", "/api/v1/dags/{}/dagRuns/{}/taskInstances/{}"),  # mark a task
        ("PATCH", "/api/v1/dags/{}/dagRuns/{}/taskInstances/{}/{}"),  # mark a mapped instance
        ("POST", "/api/v1/dags/{}/clearTaskInstances"),
    )
)


def required_role(method: str, path: str) -> Role | None:
    """The weakest role allowed to call ``method path``; None: open to anyone."""
    path = path.rstrip("/") or "/"
    if path in OPEN_PATHS:
        return None
    if path.startswith(_ADMIN_PREFIXES):
        return "admin"
    if path.startswith(_OP_PREFIXES):
        return "op"
    if method in ("GET", "HEAD"):
        return "viewer"
    if any(method == m and pattern.match(path) for m, pattern in _USER_ACTIONS):
        return "user"
    return "admin"
