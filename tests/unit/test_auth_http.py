"""Authentication over HTTP: loopback admin, sessions, CSRF, API tokens, audit, metrics."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.api.app import create_app
from ketch.auth import api_tokens, users
from ketch.auth.sessions import SESSION_COOKIE
from ketch.config import get_settings
from ketch.db.models import ApiToken, AuditLog
from tests.support.web import local_client, remote_client

SECRET = "session-secret-for-tests-" * 2


def _cookie(
    role: str = "op",
    *,
    email: str = "ann@corp.com",
    age: int = 0,
    idle: int = 0,
    checked_ago: int = 0,
    csrf: str = "csrf-1",
) -> str:
    now = int(time.time())
    data = {
        "user": {
            "email": email,
            "name": "Ann",
            "role": role,
            "hd": "corp.com",
            "iat": now - age,
            "seen": now - idle,
            "checked": now - checked_ago,
        },
        "csrf": csrf,
    }
    return TimestampSigner(SECRET).sign(base64.b64encode(json.dumps(data).encode())).decode()


@pytest.fixture
def oidc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_ID", "ketch-test")
    monkeypatch.setenv("KETCH__AUTH__OIDC_CLIENT_SECRET", "client-secret")
    monkeypatch.setenv("KETCH__AUTH__OIDC_ISSUER", "http://127.0.0.1:9/")
    monkeypatch.setenv("KETCH__AUTH__ALLOWED_DOMAINS", '["corp.com"]')
    monkeypatch.setenv("KETCH__AUTH__ROLE_RULES", '[{"domain": "corp.com", "role": "op"}]')
    monkeypatch.setenv("KETCH__AUTH__SESSION_SECRET", SECRET)
    get_settings.cache_clear()


@pytest.fixture
def signed_in(sqlite_engine: Engine, oidc_env: None) -> Iterator[TestClient]:
    with remote_client(create_app(get_settings())) as client:
        yield client


def _as(client: TestClient, cookie: str) -> TestClient:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    return client


# --- no identity provider: loopback only ----------------------------------------------


def test_loopback_request_is_local_admin(sqlite_engine: Engine) -> None:
    with local_client(create_app(get_settings())) as client:
        assert client.get("/api/v1/dags").status_code == 200
        assert client.get("/api/v1/tokens").status_code == 200  # admin


def test_dns_rebinding_host_is_refused(sqlite_engine: Engine) -> None:
    """A page on evil.com resolving to 127.0.0.1 reaches us with its own Host header."""
    with local_client(create_app(get_settings()), base_url="http://evil.example:8080") as client:
        response = client.get("/api/v1/dags")
    assert response.status_code == 401


@pytest.mark.parametrize(
    "header", ["X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host"]
)
def test_request_relayed_by_a_local_proxy_is_not_local(sqlite_engine: Engine, header: str) -> None:
    """nginx on this host connects from 127.0.0.1 with Host 127.0.0.1:8080 by default."""
    with local_client(create_app(get_settings())) as client:
        assert client.get("/api/v1/dags", headers={header: "203.0.113.9"}).status_code == 401


def test_remote_request_without_identity_provider_is_refused(sqlite_engine: Engine) -> None:
    with remote_client(create_app(get_settings())) as client:
        response = client.get("/api/v1/dags")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/api/v1/health").status_code == 200


def test_cross_site_post_to_loopback_admin_is_refused(sqlite_engine: Engine) -> None:
    """A foreign page can make the browser POST to 127.0.0.1; its Origin gives it away."""
    with local_client(create_app(get_settings())) as client:
        evil = client.put(
            "/api/v1/pools/p", json={"slots": 3}, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
        same = client.put(
            "/api/v1/pools/p", json={"slots": 3}, headers={"Origin": "http://127.0.0.1"}
        )
        assert same.status_code == 200


def test_mode_none_lets_everyone_in(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__AUTH__MODE", "none")
    get_settings.cache_clear()
    with remote_client(create_app(get_settings())) as client:
        assert client.get("/api/v1/tokens").status_code == 200


def test_anonymous_page_redirects_to_sign_in(signed_in: TestClient) -> None:
    response = signed_in.get("/docs?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/docs%3Fx%3D1"


# --- sessions ---------------------------------------------------------------------------


def test_session_cookie_signs_in(signed_in: TestClient) -> None:
    assert _as(signed_in, _cookie()).get("/api/v1/variables").status_code == 200


def test_tampered_cookie_is_anonymous(signed_in: TestClient) -> None:
    cookie = _cookie(role="viewer")
    payload, _, signature = cookie.partition(".")
    forged = json.loads(base64.b64decode(payload))
    forged["user"]["role"] = "admin"
    tampered = base64.b64encode(json.dumps(forged).encode()).decode() + "." + signature
    assert _as(signed_in, tampered).get("/api/v1/dags").status_code == 401


def test_idle_and_absolute_expiry(signed_in: TestClient) -> None:
    settings = get_settings().auth
    assert (
        _as(signed_in, _cookie(idle=settings.session_idle_timeout + 5))
        .get("/api/v1/dags")
        .status_code
        == 401
    )
    old = _cookie(age=settings.session_max_age + 5)
    assert _as(signed_in, old).get("/api/v1/dags").status_code == 401
    assert _as(signed_in, _cookie(idle=60)).get("/api/v1/dags").status_code == 200


def test_csrf_token_required_for_cookie_changes(signed_in: TestClient) -> None:
    client = _as(signed_in, _cookie(csrf="right"))
    assert client.put("/api/v1/pools/p", json={"slots": 2}).status_code == 403
    wrong = client.put("/api/v1/pools/p", json={"slots": 2}, headers={"X-CSRF-Token": "wrong"})
    assert wrong.status_code == 403 and "CSRF" in wrong.json()["detail"]
    ok = client.put("/api/v1/pools/p", json={"slots": 2}, headers={"X-CSRF-Token": "right"})
    assert ok.status_code == 200


def test_recheck_applies_changed_rules(
    signed_in: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The role comes from today's rules at the next re-check, not from the cookie."""
    signed_in.app.state.settings = get_settings().model_copy(  # type: ignore[attr-defined]
        update={"auth": get_settings().auth.model_copy(update={"role_rules": []})}
    )
    stale = _cookie(role="op", checked_ago=3600)
    assert _as(signed_in, stale).get("/api/v1/dags").status_code == 401
    fresh = _cookie(role="op", checked_ago=0)
    assert _as(signed_in, fresh).get("/api/v1/dags").status_code == 200


def test_disabled_user_loses_session_at_recheck(
    signed_in: TestClient, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as session:
        assert users.record_sign_in(session, email="ann@corp.com", name="Ann", role="op")
        users.set_disabled(session, "ann@corp.com", True, by="admin@corp.com")
        session.commit()
    assert _as(signed_in, _cookie(checked_ago=0)).get("/api/v1/dags").status_code == 200
    assert _as(signed_in, _cookie(checked_ago=3600)).get("/api/v1/dags").status_code == 401
    with Session(sqlite_engine) as session:
        assert not users.record_sign_in(session, email="ann@corp.com", name="Ann", role="op")


# --- API tokens ------------------------------------------------------------------------


def _admin_token(engine: Engine, **kwargs: Any) -> str:
    with Session(engine) as session:
        _, secret = api_tokens.create_token(
            session,
            name=kwargs.pop("name", "admin"),
            role=kwargs.pop("role", "admin"),
            expires_in=kwargs.pop("expires_in", timedelta(days=1)),
            created_by="test",
            **kwargs,
        )
        session.commit()
    return secret


def test_token_lifecycle_over_the_api(signed_in: TestClient, sqlite_engine: Engine) -> None:
    admin = {"Authorization": f"Bearer {_admin_token(sqlite_engine)}"}
    signed_in.cookies.clear()
    created = signed_in.post(
        "/api/v1/tokens", json={"name": "ci", "role": "op", "expires_in_days": 90}, headers=admin
    )
    assert created.status_code == 201
    secret, token_id = created.json()["token"], created.json()["id"]
    assert secret.startswith("ketch_")
    ci = {"Authorization": f"Bearer {secret}"}
    assert signed_in.get("/api/v1/variables", headers=ci).status_code == 200
    assert signed_in.get("/api/v1/tokens", headers=ci).status_code == 403  # op, not admin
    listed = signed_in.get("/api/v1/tokens", headers=admin).json()["tokens"]
    assert secret not in json.dumps(listed)
    assert [t["last_used_at"] is not None for t in listed if t["id"] == token_id] == [True]
    with Session(sqlite_engine) as session:
        stored = session.scalars(select(ApiToken.secret_hash)).all()
    assert secret not in stored
    assert signed_in.delete(f"/api/v1/tokens/{token_id}", headers=admin).status_code == 204
    refused = signed_in.get("/api/v1/variables", headers=ci)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_expired_token_is_refused(signed_in: TestClient, sqlite_engine: Engine) -> None:
    secret = _admin_token(sqlite_engine, expires_in=timedelta(seconds=1))
    time.sleep(1.1)
    response = signed_in.get("/api/v1/dags", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_bad_token_requests_are_refused(signed_in: TestClient) -> None:
    signed_in.cookies.clear()
    assert signed_in.post("/api/v1/tokens", json={"name": "x", "role": "god"}).status_code == 401
    basic = signed_in.get("/api/v1/dags", headers={"Authorization": "Basic YWxhZGRpbjpvcGVu"})
    assert basic.status_code == 401


def test_token_creation_rejects_bad_values(signed_in: TestClient, sqlite_engine: Engine) -> None:
    admin = {"Authorization": f"Bearer {_admin_token(sqlite_engine)}"}
    bad_role = signed_in.post("/api/v1/tokens", json={"name": "x", "role": "god"}, headers=admin)
    assert bad_role.status_code == 422
    bad_scope = signed_in.post(
        "/api/v1/tokens", json={"name": "x", "role": "viewer", "scopes": ["root"]}, headers=admin
    )
    assert bad_scope.status_code == 422 and "root" in bad_scope.text


# --- metrics ---------------------------------------------------------------------------


def test_metrics_need_the_scope_or_admin(signed_in: TestClient, sqlite_engine: Engine) -> None:
    signed_in.cookies.clear()
    assert signed_in.get("/metrics").status_code == 401
    viewer = _admin_token(sqlite_engine, name="v", role="viewer")
    scraper = _admin_token(sqlite_engine, name="prometheus", role="viewer", scopes=["metrics"])
    assert (
        signed_in.get("/metrics", headers={"Authorization": f"Bearer {viewer}"}).status_code == 403
    )
    assert (
        signed_in.get("/metrics", headers={"Authorization": f"Bearer {scraper}"}).status_code == 200
    )
    # the metrics scope opens nothing else beyond the token's role
    assert (
        signed_in.get(
            "/api/v1/variables", headers={"Authorization": f"Bearer {scraper}"}
        ).status_code
        == 403
    )


def test_metrics_public(
    sqlite_engine: Engine, oidc_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KETCH__API__METRICS_PUBLIC", "true")
    get_settings.cache_clear()
    with remote_client(create_app(get_settings())) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/api/v1/dags").status_code == 401


# --- audit log -------------------------------------------------------------------------


def test_changes_are_audited_without_values(signed_in: TestClient, sqlite_engine: Engine) -> None:
    admin = {"Authorization": f"Bearer {_admin_token(sqlite_engine, name='deployer')}"}
    signed_in.cookies.clear()
    put = signed_in.put(
        "/api/v1/variables/db_password", json={"value": "hunter2-secret"}, headers=admin
    )
    assert put.status_code in (200, 201), put.text
    assert signed_in.delete("/api/v1/pools/nope").status_code == 401  # refused, still recorded
    entries = signed_in.get("/api/v1/auditLog", headers=admin).json()["entries"]
    assert "hunter2-secret" not in json.dumps(entries)
    mine = [e for e in entries if e["actor"] == "token:deployer"]
    assert mine[0]["action"] == "PUT /api/v1/variables/db_password"
    assert mine[0]["status_code"] in (200, 201) and mine[0]["role"] == "admin"
    assert mine[0]["ip"] == "203.0.113.7"
    refused = [e for e in entries if e["actor"] == "anonymous"]
    assert refused[0]["action"] == "DELETE /api/v1/pools/nope" and refused[0]["status_code"] == 401
    with Session(sqlite_engine) as session:
        assert session.scalar(select(AuditLog.id).where(AuditLog.action.like("GET%"))) is None


def test_audit_entry_of_a_path_with_control_characters(engine: Engine) -> None:
    """PostgreSQL refuses NUL in text: the entry is written with it escaped, not lost."""
    with local_client(create_app(get_settings())) as client:
        client.delete("/api/v1/pools/bad%00name%0Aline")
        entries = client.get("/api/v1/auditLog").json()["entries"]
    assert entries[0]["action"] == "DELETE /api/v1/pools/bad\\x00name\\x0aline"
