"""Variables and connections in the database, on both backends: encryption at rest,
CRUD, Airflow's file formats and URIs, key rotation, the generated key file."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.authoring.connection import Connection, ConnectionUriError
from ketch.config import get_settings
from ketch.db.models import Connection as ConnectionRow
from ketch.db.models import Variable as VariableRow
from ketch.db.models import VariableAuditLog
from ketch.operations import InvalidRequest
from ketch.variables import crypto, store


def test_variable_crud_is_encrypted_at_rest_and_audited(engine: Engine) -> None:
    settings = get_settings()
    with Session(engine) as session:
        store.set_variable(session, settings, "bucket", "s3://data", description="where")
        store.set_variable(session, settings, "cfg", {"a": [1, 2]})
        store.set_variable(session, settings, "db_password", "hunter2-long")
        session.commit()
    with Session(engine) as session:
        raw = {row.key: row.val for row in session.scalars(select(VariableRow))}
        assert "s3://data" not in raw["bucket"] and "hunter2" not in raw["db_password"]
        got = store.get_variable(session, settings, "bucket")
        assert (got.value, got.description, got.source) == ("s3://data", "where", None)
        assert json.loads(store.get_variable(session, settings, "cfg").value) == {"a": [1, 2]}
        # A key that looks like a secret is sensitive unless told otherwise.
        assert store.get_variable(session, settings, "db_password").is_sensitive
        assert not store.get_variable(session, settings, "bucket").is_sensitive
        listed = store.list_variables(session, settings)
        assert [r.key for r in listed] == ["bucket", "cfg", "db_password"]
        assert listed[2].to_dict(reveal=False)["value"] == "***"

        store.set_variable(session, settings, "bucket", "s3://other")
        store.delete_variable(session, "cfg", actor="cli")
        with pytest.raises(store.VariableNotFound):
            store.delete_variable(session, "cfg")
        with pytest.raises(store.VariableNotFound):
            store.get_variable(session, settings, "cfg")
        session.commit()
        got = store.get_variable(session, settings, "bucket")
        assert got.value == "s3://other" and got.description == "where"
        audit = [
            (a.key, a.action, a.source)
            for a in session.scalars(select(VariableAuditLog).order_by(VariableAuditLog.id))
        ]
    assert audit == [
        ("bucket", "created", "user"),
        ("cfg", "created", "user"),
        ("db_password", "created", "user"),
        ("bucket", "updated", "user"),
        ("cfg", "deleted", "cli"),
    ]


def test_setting_a_synced_key_by_hand_makes_it_manual(engine: Engine) -> None:
    settings = get_settings()
    with Session(engine) as session:
        store.set_variable(session, settings, "k", "v1")
        row = session.scalars(select(VariableRow)).one()
        row.source, row.source_version = "aws:devops/vars", "ver-1"
        session.commit()
        assert store.get_variable(session, settings, "k").source == "aws:devops/vars"
        store.set_variable(session, settings, "k", "mine")
        session.commit()
        got = store.get_variable(session, settings, "k")
    assert (got.value, got.source, got.source_version) == ("mine", None, None)


def test_import_and_export_airflow_variables_json(engine: Engine) -> None:
    settings = get_settings()
    airflow_file = {
        "env": "prod",
        "retries": 3,
        "cfg": {"tables": ["a", "b"]},
        "described": {"value": "x", "description": "a described one"},
    }
    with Session(engine) as session:
        assert store.import_variables(session, settings, airflow_file) == 4
        session.commit()
        assert store.get_variable(session, settings, "retries").value == "3"
        assert store.get_variable(session, settings, "cfg").value == '{"tables": ["a", "b"]}'
        assert store.get_variable(session, settings, "described").description == "a described one"
        assert store.export_variables(session, settings) == airflow_file
        # Bad input changes nothing.
        for bad in (["not", "an", "object"], {"": "empty key"}):
            with pytest.raises(InvalidRequest):
                store.import_variables(session, settings, bad)
        session.rollback()
        assert len(store.list_variables(session, settings)) == 4


@pytest.mark.parametrize(
    ("uri", "fields"),
    [
        (
            "postgres://user:p%40ss%2Fword@db.example.com:5432/analytics",
            {
                "conn_type": "postgres",
                "host": "db.example.com",
                "login": "user",
                "password": "p@ss/word",
                "port": 5432,
                "schema": "analytics",
                "extra": None,
            },
        ),
        (
            "google-cloud-platform://?project=p1&keyfile=x",
            {
                "conn_type": "google_cloud_platform",
                "host": None,
                "extra_dejson": {"project": "p1", "keyfile": "x"},
            },
        ),
        (
            "http://https%3A%2F%2Fapi.example.com/?__extra__=%7B%22n%22%3A+1%7D",
            {"conn_type": "http", "extra_dejson": {"n": 1}},
        ),
        ("postgresql://h", {"conn_type": "postgres", "host": "h"}),
        ("http://http://example.com", {"conn_type": "http", "host": "http://example.com"}),
    ],
)
def test_connection_uri_matches_airflow(uri: str, fields: dict[str, object]) -> None:
    conn = Connection.from_uri("c", uri)
    for name, expected in fields.items():
        assert getattr(conn, name) == expected, name
    again = Connection.from_uri("c", conn.get_uri())
    assert again.to_dict() == conn.to_dict()


def test_connection_uri_errors() -> None:
    for bad in ("no-scheme", "a://b://c://d", "x://h:notaport"):
        with pytest.raises(ConnectionUriError):
            Connection.from_uri("c", bad)


def test_connection_crud_import_export(engine: Engine) -> None:
    settings = get_settings()
    conn = Connection(
        conn_id="wh",
        conn_type="postgres",
        host="db",
        login="u",
        password="s3cret-pw",
        port=5432,
        schema="s",
        extra='{"sslmode": "require"}',
    )
    with Session(engine) as session:
        store.set_connection(session, settings, conn, overwrite=False)
        session.commit()
        raw = session.scalars(select(ConnectionRow)).one()
        assert "s3cret" not in (raw.password or "") and "sslmode" not in (raw.extra or "")
        assert store.get_connection(session, settings, "wh") == conn
        with pytest.raises(store.ConnectionAlreadyExists):
            store.set_connection(session, settings, conn, overwrite=False)
        exported = store.export_connections(session, settings)
        assert exported == {
            "wh": {
                "conn_type": "postgres",
                "description": None,
                "host": "db",
                "login": "u",
                "password": "s3cret-pw",
                "schema": "s",
                "port": 5432,
                "extra": '{"sslmode": "require"}',
            }
        }
        store.delete_connection(session, "wh")
        with pytest.raises(store.ConnectionNotFound):
            store.delete_connection(session, "wh")
        data = {**exported, "api": "http://user:pw@api.example.com:8443/v1", "bad_extra": None}
        with pytest.raises(InvalidRequest):
            store.import_connections(session, settings, data)
        del data["bad_extra"]
        data["wh"]["extra"] = {"sslmode": "require"}  # an object reads too
        assert store.import_connections(session, settings, data) == 2
        session.commit()
        assert store.get_connection(session, settings, "wh") == conn
        api = store.get_connection(session, settings, "api")
        assert (api.conn_type, api.host, api.port, api.schema) == (
            "http",
            "api.example.com",
            8443,
            "v1",
        )


def test_rotate_fernet_key_reencrypts_with_the_new_key(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", old)
    get_settings.cache_clear()
    with Session(engine) as session:
        store.set_variable(session, get_settings(), "v", "value")
        store.set_connection(
            session, get_settings(), Connection("c", "http", password="pw", extra='{"a": "b"}')
        )
        session.commit()
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", f"{new},{old}")
    get_settings.cache_clear()
    with Session(engine) as session:
        assert store.rotate_fernet_key(session, get_settings()) == 3
        session.commit()
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", new)  # the old key dropped
    get_settings.cache_clear()
    with Session(engine) as session:
        assert store.get_variable(session, get_settings(), "v").value == "value"
        assert store.get_connection(session, get_settings(), "c").password == "pw"
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", old)  # the old key alone no longer reads
    get_settings.cache_clear()
    with Session(engine) as session, pytest.raises(crypto.FernetKeyError):
        store.get_variable(session, get_settings(), "v")


def test_without_a_configured_key_one_is_generated_once(ketch_home: object) -> None:
    settings = get_settings()
    first = crypto.configured_keys(settings)
    path = crypto.key_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.configured_keys(settings) == first
    fernet = crypto.get_fernet(settings)
    assert crypto.decrypt(fernet, crypto.encrypt(fernet, "x")) == "x"


def test_invalid_configured_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", "not-a-key")
    get_settings.cache_clear()
    with pytest.raises(crypto.FernetKeyError, match="invalid"):
        crypto.get_fernet(get_settings())
