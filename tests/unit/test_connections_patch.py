"""PATCH /api/v1/connections/{id} (Airflow 3's shape), on both backends: the fields of
``update_mask`` or of the body, a password kept unless sent, 400 and 404 answers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from ketch.api.app import create_app
from ketch.config import get_settings
from tests.support.web import local_client
from tests.unit.test_execution_api import make_try

API = "/api/v1/connections"
Stored = Callable[[], dict[str, object]]


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with local_client(create_app(get_settings())) as c:
        c.put(
            f"{API}/wh",
            json={
                "conn_type": "postgres",
                "host": "db",
                "port": 5432,
                "login": "ann",
                "password": "pw",
                "extra": {"sslmode": "require", "api_key": "k-1"},
                "description": "warehouse",
            },
        ).raise_for_status()
        yield c


@pytest.fixture
def stored(client: TestClient, engine: Engine) -> Callable[[], dict[str, object]]:
    """What a task reads of "wh" (unmasked), through the execution API."""
    token = make_try(engine).headers()

    def read() -> dict[str, object]:
        answer = client.get("/execution/connections/wh", headers=token)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    return read


def test_update_mask_changes_those_fields_and_keeps_the_password(
    client: TestClient, stored: Stored
) -> None:
    body = {"connection_id": "wh", "conn_type": "postgres", "host": "db2", "port": None}
    answer = client.patch(f"{API}/wh?update_mask=host&update_mask=port", json=body)
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert shown["host"] == "db2" and shown["port"] is None and shown["password"] == "***"
    now = stored()
    assert now["password"] == "pw" and now["login"] == "ann"
    assert json.loads(str(now["extra"])) == {"sslmode": "require", "api_key": "k-1"}
    assert now["description"] == "warehouse"


def test_a_masked_field_in_the_mask_but_not_the_body_is_cleared(
    client: TestClient, stored: Stored
) -> None:
    body = {"connection_id": "wh", "conn_type": "postgres"}
    assert client.patch(f"{API}/wh?update_mask=password", json=body).status_code == 200
    assert stored()["password"] is None


def test_without_a_mask_the_body_sets_its_fields_and_always_password_and_extra(
    client: TestClient, stored: Stored
) -> None:
    """Airflow's rule: without update_mask, password and extra are always written (the
    body's value, or none); other fields only when the body sets them."""
    body = {"connection_id": "wh", "conn_type": "mysql", "login": "bob"}
    assert client.patch(f"{API}/wh", json=body).status_code == 200
    now = stored()
    assert (now["conn_type"], now["login"], now["host"]) == ("mysql", "bob", "db")
    assert now["password"] is None and now["extra"] is None


def test_what_a_get_showed_sent_back_changes_no_secret(client: TestClient, stored: Stored) -> None:
    shown = client.get(f"{API}/wh").json()
    extra = json.loads(shown["extra"]) | {"sslmode": "disable"}
    body = shown | {"extra": json.dumps(extra), "host": "db3"}
    answer = client.patch(f"{API}/wh", json=body)
    assert answer.status_code == 200, answer.text
    now = stored()
    assert now["password"] == "pw" and now["host"] == "db3"
    assert json.loads(str(now["extra"])) == {"sslmode": "disable", "api_key": "k-1"}


def test_bad_patches_get_one_clear_answer_and_change_nothing(
    client: TestClient, stored: Stored
) -> None:
    before = stored()
    other = client.patch(f"{API}/wh", json={"connection_id": "x", "conn_type": "http"})
    assert other.status_code == 400
    assert "does not match" in other.json()["detail"]
    unknown = client.patch(
        f"{API}/wh?update_mask=hostname", json={"connection_id": "wh", "conn_type": "http"}
    )
    assert unknown.status_code == 400 and "hostname" in unknown.json()["detail"]
    missing = client.patch(f"{API}/nope", json={"connection_id": "nope", "conn_type": "http"})
    assert missing.status_code == 404
    bad_extra = client.patch(
        f"{API}/wh?update_mask=extra",
        json={"connection_id": "wh", "conn_type": "http", "extra": "{not json"},
    )
    assert bad_extra.status_code == 422 and "extra" in bad_extra.text
    bad_port = client.patch(
        f"{API}/wh?update_mask=port", json={"connection_id": "wh", "conn_type": "x", "port": -1}
    )
    assert bad_port.status_code == 422
    assert stored() == before
