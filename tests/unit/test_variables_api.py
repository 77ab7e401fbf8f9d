"""Variables and connections over the REST API and the execution API, on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from ketch.api.app import create_app
from ketch.config import get_settings
from tests.support.web import local_client
from tests.unit.test_execution_api import make_try

API = "/api/v1"


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with local_client(create_app(get_settings())) as c:
        yield c


def test_variables_rest_crud(client: TestClient) -> None:
    created = client.post(
        f"{API}/variables", json={"key": "env", "value": "prod", "description": "stage"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["value"] == "prod" and created.json()["source"] is None
    assert client.post(f"{API}/variables", json={"key": "env", "value": "x"}).status_code == 409
    put = client.put(f"{API}/variables/cfg/with/slash", json={"value": {"a": 1}})
    assert put.status_code == 200 and put.json()["value"] == '{"a": 1}'
    secret = client.put(f"{API}/variables/api_token", json={"value": "abcdef"})
    assert secret.json()["value"] == "***" and secret.json()["is_sensitive"]
    assert client.get(f"{API}/variables/cfg/with/slash").json()["value"] == '{"a": 1}'
    listing = client.get(f"{API}/variables", params={"limit": 2}).json()
    assert listing["total_entries"] == 3
    assert [v["key"] for v in listing["variables"]] == ["api_token", "cfg/with/slash"]
    assert listing["variables"][0]["value"] == "***"
    assert client.delete(f"{API}/variables/env").status_code == 204
    missing = client.get(f"{API}/variables/env")
    assert missing.status_code == 404 and "env" in missing.json()["detail"]
    assert client.delete(f"{API}/variables/env").status_code == 404
    bad = client.put(f"{API}/variables/x", json={"value": "v", "nope": 1})
    assert bad.status_code == 422


def test_variables_rest_import_is_all_or_nothing(client: TestClient) -> None:
    ok = client.post(f"{API}/variables/import", json={"a": "1", "b": {"x": [1]}})
    assert ok.status_code == 200 and ok.json() == {"imported": 2}
    assert client.get(f"{API}/variables/b").json()["value"] == '{"x": [1]}'
    bad = client.post(f"{API}/variables/import", json=["a", "b"])
    assert bad.status_code == 422
    bad = client.post(f"{API}/variables/import", json={"c": "3", "": "no key"})
    assert bad.status_code == 422
    assert client.get(f"{API}/variables/c").status_code == 404


def test_connections_rest_crud_never_returns_the_password(client: TestClient) -> None:
    body = {
        "connection_id": "wh",
        "conn_type": "postgres",
        "host": "db",
        "login": "u",
        "password": "pw-secret",
        "schema": "analytics",
        "port": 5432,
        "extra": {"sslmode": "require"},
    }
    created = client.post(f"{API}/connections", json=body)
    assert created.status_code == 201, created.text
    got = created.json()
    assert got["password"] == "***" and got["schema"] == "analytics"
    assert got["extra"] == '{"sslmode": "require"}'
    assert client.post(f"{API}/connections", json=body).status_code == 409
    put = client.put(f"{API}/connections/wh", json={"conn_type": "mysql", "host": "h2"})
    assert put.status_code == 200 and put.json()["password"] is None
    assert client.get(f"{API}/connections").json()["total_entries"] == 1
    bad = client.put(f"{API}/connections/x", json={"conn_type": "http", "extra": "{not json"})
    assert bad.status_code == 422
    imported = client.post(f"{API}/connections/import", json={"api": "http://a:b@h:1/s"})
    assert imported.json() == {"imported": 1}
    assert client.get(f"{API}/connections/api").json()["port"] == 1
    assert client.delete(f"{API}/connections/wh").status_code == 204
    assert client.get(f"{API}/connections/wh").status_code == 404


def test_execution_api_reads_variables_and_connections_with_a_try_token(
    client: TestClient, engine: Engine
) -> None:
    token = make_try(engine).headers()  # a queued try's: a try token lives as long as its try
    client.put(f"{API}/variables/bucket", json={"value": "s3://b"})
    client.put(f"{API}/variables/hidden", json={"value": "xyz", "is_sensitive": True})
    client.put(
        f"{API}/connections/wh",
        json={"conn_type": "postgres", "host": "db", "password": "pw", "extra": '{"a": "b"}'},
    )
    assert client.get("/execution/variables/bucket").status_code == 401
    bad = {"Authorization": "Bearer forged.token.value"}
    assert client.get("/execution/variables/bucket", headers=bad).status_code == 401
    got = client.get("/execution/variables/bucket", headers=token)
    assert got.json() == {"key": "bucket", "value": "s3://b", "is_sensitive": False}
    assert client.get("/execution/variables/hidden", headers=token).json()["is_sensitive"]
    assert client.get("/execution/variables/nope", headers=token).status_code == 404
    conn = client.get("/execution/connections/wh", headers=token).json()
    assert conn["password"] == "pw" and conn["host"] == "db" and conn["extra"] == '{"a": "b"}'
    assert client.get("/execution/connections/nope", headers=token).status_code == 404


def test_sensitive_connection_extras_are_masked_and_kept_by_a_put(
    client: TestClient, engine: Engine
) -> None:
    import json

    extra = {
        "region": "eu-west-1",
        "api_key": "k-123",
        "Authorization": "Bearer abc",
        "nested": {"client_secret": "s-456", "timeout": 30, "list": [{"access_token": "t-7"}]},
        "keyfile_dict": {"type": "service_account", "private_key": "-----BEGIN"},
        "retries": 3,
        "empty_password": None,
    }
    body = {"conn_type": "http", "host": "h", "password": "pw-secret", "extra": extra}
    created = client.put(f"{API}/connections/svc", json=body)
    assert created.status_code == 200, created.text
    for shown in (
        created.json(),
        client.get(f"{API}/connections/svc").json(),
        client.get(f"{API}/connections").json()["connections"][0],
    ):
        assert shown["password"] == "***"
        assert json.loads(shown["extra"]) == {
            "region": "eu-west-1",
            "api_key": "***",
            "Authorization": "***",
            "nested": {"client_secret": "***", "timeout": 30, "list": [{"access_token": "***"}]},
            "keyfile_dict": {"type": "***", "private_key": "***"},
            "retries": 3,
            "empty_password": None,
        }
        for secret in ("pw-secret", "k-123", "Bearer abc", "s-456", "t-7", "BEGIN"):
            assert secret not in json.dumps(shown)
    # Edit what a GET showed: the masks are kept as the stored values, edits are taken.
    shown = client.get(f"{API}/connections/svc").json()
    edited = json.loads(shown["extra"])
    edited["region"] = "us-east-1"
    edited["nested"]["timeout"] = 60
    edited["nested"]["client_secret"] = "s-new"
    put = client.put(
        f"{API}/connections/svc",
        json={"conn_type": "http", "host": "h2", "password": "***", "extra": json.dumps(edited)},
    )
    assert put.status_code == 200, put.text
    token = make_try(engine).headers()
    stored = client.get("/execution/connections/svc", headers=token).json()
    assert stored["password"] == "pw-secret" and stored["host"] == "h2"
    assert json.loads(stored["extra"]) == {
        **extra,
        "region": "us-east-1",
        "nested": {"client_secret": "s-new", "timeout": 60, "list": [{"access_token": "t-7"}]},
    }
    # *** where nothing was hidden, or for a new connection, is a value like any other.
    client.put(f"{API}/connections/svc", json={"conn_type": "http", "extra": {"note": "***"}})
    assert client.get(f"{API}/connections/svc").json()["extra"] == '{"note": "***"}'
    client.put(f"{API}/connections/fresh", json={"conn_type": "http", "password": "***"})
    assert client.get("/execution/connections/fresh", headers=token).json()["password"] == "***"


def test_an_extra_with_nothing_sensitive_is_returned_as_stored(client: TestClient) -> None:
    text = '{"b": 1,  "a": [1, 2]}'
    client.put(f"{API}/connections/plain", json={"conn_type": "http", "extra": text})
    assert client.get(f"{API}/connections/plain").json()["extra"] == text
