"""The variables, connections, pools, API tokens, audit log and health pages: each role
sees the menu entries and pages its API role allows (others get a 403 page naming the
role), values are hidden exactly as the REST API hides them, and the set forms' requests
(as static/ketch.js builds them) are ones the API accepts."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from ketch.auth import api_tokens, audit
from ketch.authoring.connection import Connection
from ketch.config import get_settings
from ketch.db.models import Variable as VariableRow
from ketch.variables import store
from tests.unit.test_web_pages import Web, _seed

SECRET = "s3cr3t-value-never-shown"


def _menu(text: str) -> list[str]:
    nav = text.split('<nav aria-label="Main" class="menu">', 1)[1].split("</nav>", 1)[0]
    return re.findall(r'<a href="([^"]+)">', nav)


def _fill(engine: Engine) -> None:
    settings = get_settings()
    with Session(engine) as session:
        store.set_variable(session, settings, "db_password", SECRET)  # sensitive by name
        store.set_variable(session, settings, "region", "eu-west-1", description="where")
        store.set_variable(session, settings, "synced_key", "from aws")
        session.execute(
            update(VariableRow)
            .where(VariableRow.key == "synced_key")
            .values(source="aws-prod", source_version="v7")
        )
        store.set_connection(
            session,
            settings,
            Connection(
                "warehouse",
                "postgres",
                host="db.corp",
                login="etl",
                password=SECRET,
                extra=json.dumps({"sslmode": "require", "api_token": SECRET}),
            ),
        )
        api_tokens.create_token(
            session,
            name="ci",
            role="user",
            expires_in=timedelta(days=3),
            created_by="admin@corp.com",
        )
        audit.record(
            session, actor="alice@corp.com", action="PATCH /api/v1/dags/etl", status_code=200
        )
        session.commit()


@pytest.mark.parametrize(
    ("role", "pages"),
    [
        ("viewer", ["/dags", "/health"]),
        ("user", ["/dags", "/health"]),
        ("op", ["/dags", "/variables", "/connections", "/pools", "/health"]),
        (
            "admin",
            ["/dags", "/variables", "/connections", "/pools", "/tokens", "/audit", "/health"],
        ),
    ],
)
def test_menu_and_pages_follow_the_role(web: Web, role: str, pages: list[str]) -> None:
    _fill(web.engine)
    assert _menu(web.get("/dags", role=role).text) == pages
    for path in ("/variables", "/connections", "/pools", "/tokens", "/audit", "/health"):
        response = web.get(path, role=role)
        expected = 200 if path in pages else 403
        assert response.status_code == expected, (role, path)
        if expected == 403:
            assert "role; you are signed in as " + role in response.text
    assert web.get("/variables", role=None).status_code in (302, 303, 307)  # sign in first


def test_variables_page_hides_sensitive_values_and_keeps_synced_keys_read_only(
    web_both: Web,
) -> None:
    web = web_both
    _fill(web.engine)
    text = web.get("/variables", role="op").text
    assert SECRET not in text
    row = text.split('<tr data-key="db_password">', 1)[1].split("</tr>", 1)[0]
    assert "<code>***</code>" in row and "(sensitive)" in row
    synced = text.split('<tr data-key="synced_key">', 1)[1].split("</tr>", 1)[0]
    assert "sync: aws-prod (v7)" in synced and "change it in aws-prod" in synced
    assert 'data-method="DELETE"' not in synced
    region = text.split('<tr data-key="region">', 1)[1].split("</tr>", 1)[0]
    assert 'data-method="DELETE" data-url="/api/v1/variables/region"' in region


def test_the_set_variable_form_sends_a_request_the_api_takes(web: Web) -> None:
    """What ketch.js sends: the key in the URL (percent-encoded), value and the boxes in
    the body, an empty description and an unticked 'sensitive' left out."""
    _fill(web.engine)
    text = web.get("/variables", role="op").text
    form = text.split('data-method="PUT"', 1)[1].split("</form>", 1)[0]
    assert 'data-url="/api/v1/variables/{key}"' in form
    assert 'data-text-field="key" data-in-url="true"' in form
    assert 'data-field="is_sensitive" data-omit-unset="true"' in form
    answer = web.send("PUT", "/api/v1/variables/api%2Fpassword", "op", {"value": "hunter2"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["is_sensitive"] is True  # named like a secret: stays sensitive
    assert web.send("PUT", "/api/v1/variables/x", "user", {"value": "1"}).status_code == 403


def test_connections_page_shows_what_the_api_shows(web_both: Web) -> None:
    web = web_both
    _fill(web.engine)
    text = web.get("/connections", role="op").text
    assert SECRET not in text
    row = text.split('<tr data-conn-id="warehouse">', 1)[1].split("</tr>", 1)[0]
    assert "<td>postgres</td><td>db.corp</td>" in row and "<td>***</td>" in row
    extra = json.loads(html.unescape(re.search(r"<code>(.*?)</code>", row).group(1)))  # type: ignore[union-attr]
    assert extra == {"sslmode": "require", "api_token": "***"}


def _stored_connection(web: Web, conn_id: str) -> Connection:
    with Session(web.engine) as session:
        return store.get_connection(session, get_settings(), conn_id)


def test_the_connection_forms_send_requests_the_api_takes_and_keep_secrets(
    web_both: Web,
) -> None:
    """Edit: a PATCH whose update_mask names the fields the form sends (ketch.js leaves a
    blank password out of both), so the password stays; the masked extra sent back keeps
    its hidden value. Add (POST) and delete forms too. No secret reaches the page."""
    web = web_both
    _fill(web.engine)
    text = web.get("/connections", role="op").text
    assert SECRET not in text
    row = text.split('<tr data-conn-id="warehouse">', 1)[1].split("</tr>", 1)[0]
    edit = row.split('data-method="PATCH"', 1)[1].split("</form>", 1)[0]
    assert 'data-url="/api/v1/connections/warehouse"' in edit
    assert (
        'data-update-mask="true"' in edit
        and 'data-body="{&#34;connection_id&#34;: &#34;warehouse&#34;}"' in edit
    )
    password = re.search(r"<input[^>]*data-text-field=\"password\"[^>]*>", edit).group(0)  # type: ignore[union-attr]
    assert "value=" not in password and 'data-omit-unset="true"' in password
    assert 'value="db.corp"' in edit
    shown_extra = html.unescape(re.search(r"<textarea[^>]*>(.*?)</textarea>", edit, re.S).group(1))  # type: ignore[union-attr]
    assert json.loads(shown_extra) == {"sslmode": "require", "api_token": "***"}
    # What ketch.js sends for an edit of the host, password left blank, extra as shown.
    body = {
        "connection_id": "warehouse",
        "conn_type": "postgres",
        "host": "db2.corp",
        "port": None,
        "schema": None,
        "login": "etl",
        "extra": shown_extra.replace("require", "disable"),
        "description": None,
    }
    mask = "&".join(f"update_mask={name}" for name in body if name != "connection_id")
    answer = web.send("PATCH", f"/api/v1/connections/warehouse?{mask}", "op", body)
    assert answer.status_code == 200, answer.text
    conn = _stored_connection(web, "warehouse")
    assert (conn.host, conn.password) == ("db2.corp", SECRET)
    assert json.loads(conn.extra or "") == {"sslmode": "disable", "api_token": SECRET}
    add = text.split('data-method="POST" data-url="/api/v1/connections"', 1)[1].split("</form>", 1)[
        0
    ]
    assert 'data-text-field="connection_id"' in add and 'data-numbers="port"' in add
    new = {"connection_id": "api", "conn_type": "http", "host": None, "port": 443, "password": "p"}
    assert web.send("POST", "/api/v1/connections", "op", new).status_code == 201
    assert (
        'data-method="DELETE" data-url="/api/v1/connections/api"'
        in web.get("/connections", role="op").text
    )
    assert web.send("DELETE", "/api/v1/connections/api", "op", {}).status_code == 204
    assert (
        web.send("PATCH", f"/api/v1/connections/warehouse?{mask}", "user", body).status_code == 403
    )


def test_pools_page_and_its_form(web: Web) -> None:
    _seed(web.engine)
    text = web.get("/pools", role="op").text
    assert '<tr data-pool="default_pool">' in text
    form = text.split('data-method="PUT"', 1)[1].split("</form>", 1)[0]
    assert 'data-url="/api/v1/pools/{name}"' in form and 'data-numbers="slots"' in form
    answer = web.send("PUT", "/api/v1/pools/etl", "op", {"slots": 4})
    assert answer.status_code == 200, answer.text
    assert '<tr data-pool="etl">' in web.get("/pools", role="op").text


def test_tokens_and_audit_pages_for_admins(web: Web) -> None:
    _fill(web.engine)
    tokens = web.get("/tokens", role="admin").text
    assert '<th scope="row">ci</th><td>user</td>' in tokens
    audit_page = web.get("/audit", role="admin").text
    assert "alice@corp.com" in audit_page and "PATCH /api/v1/dags/etl" in audit_page
    none = web.get("/audit?actor=bob@corp.com", role="admin").text
    assert "alice@corp.com" not in none.split("<table", 1)[-1]


def test_health_page(web: Web) -> None:
    text = web.get("/health", role="viewer").text
    assert 'data-testid="health-status">ok<' in text
    assert 'data-testid="health-database">ok<' in text
    assert "no scheduler has run yet" in text
