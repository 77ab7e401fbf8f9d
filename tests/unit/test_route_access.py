"""Every route for every kind of caller, with the status each must get.

The routes come from the app itself (its OpenAPI document plus the hidden routes),
so a new route without an entry in ``EXPECTED_ROLE`` fails this test: nobody can add
a route and forget to decide who may call it. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch.api.app import create_app
from ketch.auth import api_tokens
from ketch.auth.sessions import SESSION_COOKIE
from ketch.auth.try_tokens import sign_try_token
from ketch.config import Settings, get_settings
from ketch.executors.base import TryKey
from tests.support.web import remote_client

SESSION_SECRET = "test-session-secret-" * 3

# The weakest role each route needs; None: open to anyone. Written here, apart from
# ketch.auth.policy, so the policy is checked against an independent statement of intent.
EXPECTED_ROLE: dict[tuple[str, str], str | None] = {
    ("GET", "/api/v1/health"): None,
    ("GET", "/api/v1/dags"): "viewer",
    ("GET", "/api/v1/dags/{dag_id}"): "viewer",
    ("PATCH", "/api/v1/dags/{dag_id}"): "user",
    ("GET", "/api/v1/dags/{dag_id}/tasks"): "viewer",
    ("GET", "/api/v1/dagSources/{dag_id}"): "viewer",
    ("GET", "/api/v1/dags/{dag_id}/dagRuns"): "viewer",
    ("POST", "/api/v1/dags/{dag_id}/dagRuns"): "user",
    ("GET", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}"): "viewer",
    ("PATCH", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}"): "user",
    ("GET", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances"): "viewer",
    ("GET", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}"): "viewer",
    (
        "GET",
        "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/listMapped",
    ): "viewer",
    (
        "GET",
        "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}",
    ): "viewer",
    (
        "PATCH",
        "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}",
    ): "user",
    ("PATCH", "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}"): "user",
    ("POST", "/api/v1/dags/{dag_id}/clearTaskInstances"): "user",
    (
        "GET",
        "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
    ): "viewer",
    (
        "GET",
        "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries",
    ): "viewer",
    (
        "GET",
        "/api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}",
    ): "viewer",
    ("GET", "/api/v1/importErrors"): "viewer",
    ("GET", "/api/v1/pools"): "op",
    ("GET", "/api/v1/pools/{pool_name}"): "op",
    ("PUT", "/api/v1/pools/{pool_name}"): "op",
    ("DELETE", "/api/v1/pools/{pool_name}"): "op",
    ("GET", "/api/v1/variables"): "op",
    ("POST", "/api/v1/variables"): "op",
    ("POST", "/api/v1/variables/import"): "op",
    ("GET", "/api/v1/variables/syncStatus"): "op",
    ("GET", "/api/v1/variables/{key}"): "op",
    ("PUT", "/api/v1/variables/{key}"): "op",
    ("DELETE", "/api/v1/variables/{key}"): "op",
    ("GET", "/api/v1/connections"): "op",
    ("POST", "/api/v1/connections"): "op",
    ("POST", "/api/v1/connections/import"): "op",
    ("GET", "/api/v1/connections/{conn_id}"): "op",
    ("PUT", "/api/v1/connections/{conn_id}"): "op",
    ("PATCH", "/api/v1/connections/{conn_id}"): "op",
    ("DELETE", "/api/v1/connections/{conn_id}"): "op",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{token_id}"): "admin",
    ("GET", "/api/v1/users"): "admin",
    ("PATCH", "/api/v1/users/{email}"): "admin",
    ("GET", "/api/v1/auditLog"): "admin",
    # Admins, or a token with the metrics scope (test_metrics_scope), unless metrics_public.
    ("GET", "/metrics"): "admin",
    ("GET", "/openapi.json"): "viewer",
    ("GET", "/docs"): "viewer",
    ("GET", "/"): "viewer",  # a page: anonymous is sent to sign in
    ("GET", "/dags"): "viewer",
    ("GET", "/dags/{dag_id}"): "viewer",
    ("GET", "/dags/{dag_id}/grid"): "viewer",
    ("GET", "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}"): "viewer",
    ("GET", "/dags/{dag_id}/runs/{run_id}"): "viewer",
    ("GET", "/dags/{dag_id}/graph"): "viewer",
    ("GET", "/dags/{dag_id}/source"): "viewer",
    ("GET", "/health"): "viewer",
    # Pages over an API resource need the role of its API (a 403 page below it).
    ("GET", "/variables"): "op",
    ("GET", "/connections"): "op",
    ("GET", "/pools"): "op",
    ("GET", "/tokens"): "admin",
    ("GET", "/audit"): "admin",
    # The UI's stylesheet, scripts and vendored htmx: public, no data and no secret in them.
    ("GET", "/static/{path}"): None,
    # Sign-in routes are open by nature; /logout checks the session's CSRF token itself.
    ("GET", "/login"): None,
    ("GET", "/oauth2callback"): None,
    ("GET", "/logout"): None,
    ("POST", "/logout"): None,
}
RANK = {"viewer": 0, "user": 1, "op": 2, "admin": 3}
ROLES = list(RANK)


@dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    cookies: dict[str, str]
    role: str | None  # None: must be refused as unauthenticated


def _session_cookie(email: str, role: str, csrf: str) -> str:
    now = int(time.time())
    data = {
        "user": {
            "email": email,
            "name": email,
            "role": role,
            "hd": "corp.com",
            "iat": now,
            "seen": now,
            "checked": now,
        },
        "csrf": csrf,
    }
    payload = base64.b64encode(json.dumps(data).encode())
    return TimestampSigner(SESSION_SECRET).sign(payload).decode()


@pytest.fixture
def app_and_callers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, list[Caller]]]:
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_ID", "ketch-test")
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_SECRET", "client-secret")
    monkeypatch.setenv("KETCH__AUTH__OIDC_ISSUER", "http://127.0.0.1:9/")  # never contacted
    monkeypatch.setenv("KETCH__AUTH__ALLOWED_DOMAINS", '["corp.com"]')
    monkeypatch.setenv(
        "KETCH__AUTH__ROLE_RULES",
        json.dumps([{"email": f"{r}@corp.com", "role": r} for r in ROLES]),
    )
    monkeypatch.setenv("KETCH__AUTH__SESSION_SECRET", SESSION_SECRET)
    get_settings.cache_clear()
    settings: Settings = get_settings()
    callers = [Caller("anonymous", {}, {}, None)]
    for role in ROLES:
        csrf = f"csrf-{role}"
        callers.append(
            Caller(
                f"session:{role}",
                {"X-CSRF-Token": csrf},
                {SESSION_COOKIE: _session_cookie(f"{role}@corp.com", role, csrf)},
                role,
            )
        )
    with Session(engine) as session:
        for role in ROLES:
            _, secret = api_tokens.create_token(
                session,
                name=f"ci-{role}",
                role=role,
                expires_in=timedelta(days=1),
                created_by="test",
            )
            callers.append(Caller(f"token:{role}", {"Authorization": f"Bearer {secret}"}, {}, role))
        revoked, secret = api_tokens.create_token(
            session, name="old", role="admin", expires_in=None, created_by="test"
        )
        api_tokens.revoke_token(session, revoked.id, revoked_by="test")
        callers.append(
            Caller("revoked admin token", {"Authorization": f"Bearer {secret}"}, {}, None)
        )
        session.commit()
    try_token = sign_try_token(settings, TryKey("d", "r", "t", 1), ti_id=1)
    callers.append(Caller("try token", {"Authorization": f"Bearer {try_token}"}, {}, None))
    callers.append(Caller("garbage bearer", {"Authorization": "Bearer nonsense"}, {}, None))
    with remote_client(create_app(settings), raise_server_exceptions=False) as client:
        yield client, callers


def _routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, hidden routes included.

    FastAPI keeps included routers unflattened; ``effective_route_contexts`` yields the
    routes with their full paths. The OpenAPI document is compared as a cross-check.
    """
    found: set[tuple[str, str]] = set()
    for route in client.app.router.routes:  # type: ignore[attr-defined]
        contexts = getattr(route, "effective_route_contexts", None)
        pairs = (
            [(c.path, c.original_route) for c in contexts()] if contexts else [(route.path, route)]
        )
        for path, original in pairs:
            for method in getattr(original, "methods", None) or ():
                if method != "HEAD" and not path.startswith("/execution"):
                    found.add((method, re.sub(r"\{([^}:]+):[^}]*\}", r"{\1}", path)))
    documented = {
        (method.upper(), path)
        for path, operations in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in operations
        if not path.startswith("/execution")
    }
    assert documented <= found, f"documented but not found: {documented - found}"
    return sorted(found)


_NUMERIC_PARAMS = {"token_id": "999", "try_number": "1", "map_index": "0"}


def _concrete(path: str) -> str:
    """Path parameters that name nothing real: a 404 is fine, a side effect is not."""
    return re.sub(r"\{([^}:]+)[^}]*\}", lambda m: _NUMERIC_PARAMS.get(m.group(1), "x"), path)


def test_every_route_has_a_stated_role(app_and_callers: tuple[TestClient, list[Caller]]) -> None:
    client, _ = app_and_callers
    missing = sorted(set(_routes(client)) - set(EXPECTED_ROLE))
    assert not missing, f"routes with no expected role in this test: {missing}"


def test_route_matrix(app_and_callers: tuple[TestClient, list[Caller]]) -> None:
    client, callers = app_and_callers
    wrong: list[str] = []
    for method, path in _routes(client):
        needed = EXPECTED_ROLE[(method, path)]
        for caller in callers:
            client.cookies.clear()
            client.cookies.update(caller.cookies)
            response = client.request(
                method,
                _concrete(path),
                headers={"Accept": "application/json", **caller.headers},
                json={} if method in ("POST", "PUT", "PATCH") else None,
                follow_redirects=False,
            )
            got = response.status_code
            if needed is None:
                ok = got not in (401, 403)
                want = "not 401/403"
            elif caller.role is None:
                ok = got == 401 or (got == 303 and not path.startswith("/api/"))
                want = "401"
            elif RANK[caller.role] < RANK[needed]:
                ok = got == 403
                want = "403"
            else:
                ok = got not in (401, 403) and got < 500
                want = "allowed, no 5xx"
            if not ok:
                wrong.append(f"{method} {path} as {caller.name}: {got}, want {want}")
    assert not wrong, "\n".join(wrong)


def test_execution_api_takes_only_try_tokens(
    app_and_callers: tuple[TestClient, list[Caller]],
) -> None:
    """An admin's API token or session opens nothing on the execution API."""
    client, callers = app_and_callers
    schema = client.app.openapi()  # type: ignore[attr-defined]
    routes = [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if path.startswith("/execution")
    ]
    assert routes, "the execution API is served by this app"
    wrong = []
    for method, path in routes:
        for caller in callers:
            if caller.name not in ("token:admin", "session:admin", "anonymous"):
                continue
            client.cookies.clear()
            client.cookies.update(caller.cookies)
            got = client.request(
                method,
                _concrete(path),
                headers=caller.headers,
                json={} if method == "POST" else None,
            ).status_code
            if got != 401:
                wrong.append(f"{method} {path} as {caller.name}: {got}")
    assert not wrong, "\n".join(wrong)
