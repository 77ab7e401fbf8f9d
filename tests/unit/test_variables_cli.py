"""``ketch variables``, ``ketch connections`` and ``ketch rotate-fernet-key`` on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch.cli import cli
from ketch.config import get_settings
from ketch.variables import store


@pytest.fixture(autouse=True)
def _database_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the database backend: a KETCH_API_URL in the shell must not count."""
    monkeypatch.delenv("KETCH_API_URL", raising=False)
    monkeypatch.delenv("KETCH_API_TOKEN", raising=False)


def run(*args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def test_variables_commands(engine: Engine, tmp_path: Path) -> None:
    assert run("variables", "set", "env", "prod", "--description", "stage").exit_code == 0
    assert run("variables", "set", "pw", "hunter22", "--sensitive").exit_code == 0
    assert run("variables", "get", "env").output == "prod\n"
    assert run("variables", "get", "pw").output == "hunter22\n"
    listed = run("variables", "list")
    assert "env" in listed.output and "hunter22" not in listed.output and "***" in listed.output
    rows = json.loads(run("variables", "list", "-o", "json").output)
    assert {r["key"]: r["source"] for r in rows} == {"env": "(manual)", "pw": "(manual)"}
    missing = run("variables", "get", "nope")
    assert missing.exit_code == 1 and "not found" in missing.output
    assert run("variables", "get", "nope", "--default", "d").output == "d\n"
    bad_json = run("variables", "set", "j", "{oops", "--json")
    assert bad_json.exit_code == 1
    run("variables", "set", "j", '{"a": [1]}', "--json")
    assert json.loads(run("variables", "get", "j", "--json").output) == {"a": [1]}

    # Airflow's variables.json imports unchanged, and exports back the same.
    airflow_file = tmp_path / "variables.json"
    airflow_file.write_text(json.dumps({"a": "1", "b": {"x": 2}, "c": 3}))
    imported = run("variables", "import", str(airflow_file))
    assert imported.exit_code == 0 and "3 variables imported" in imported.output
    assert run("variables", "get", "b").output == '{"x": 2}\n'
    out = tmp_path / "out.json"
    assert run("variables", "export", str(out)).exit_code == 0
    exported = json.loads(out.read_text())
    assert exported["b"] == {"x": 2} and exported["c"] == 3
    assert exported["env"] == {"value": "prod", "description": "stage"}
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ')
    result = run("variables", "import", str(broken))
    assert result.exit_code == 1 and "not valid JSON" in result.output
    assert run("variables", "import", str(tmp_path / "none.json")).exit_code == 1

    assert run("variables", "delete", "env").exit_code == 0
    assert run("variables", "delete", "env").exit_code == 1


def test_connections_commands(engine: Engine, tmp_path: Path) -> None:
    uri = "postgres://u:p%40w@db:5432/analytics?sslmode=require"
    assert run("connections", "add", "wh", "--conn-uri", uri).exit_code == 0
    again = run("connections", "add", "wh", "--conn-uri", uri)
    assert again.exit_code == 1 and "already exists" in again.output
    assert run("connections", "get", "wh", "-o", "uri").output.strip() == uri
    fields = json.loads(run("connections", "get", "wh").output)
    assert fields["password"] == "p@w" and fields["extra"] == '{"sslmode": "require"}'
    added = run(
        "connections",
        "add",
        "api",
        "--conn-type",
        "http",
        "--conn-host",
        "h",
        "--conn-port",
        "8080",
    )
    assert added.exit_code == 0
    both = run("connections", "add", "x", "--conn-uri", uri, "--conn-type", "http")
    assert both.exit_code == 1
    listed = run("connections", "list")
    assert "api" in listed.output and "p@w" not in listed.output
    out = tmp_path / "conns.json"
    assert run("connections", "export", str(out)).exit_code == 0
    data = json.loads(out.read_text())
    assert data["api"]["port"] == 8080 and data["wh"]["password"] == "p@w"
    assert run("connections", "delete", "wh").exit_code == 0
    assert run("connections", "delete", "wh").exit_code == 1
    result = run("connections", "import", str(out))
    assert result.exit_code == 0 and "2 connections imported" in result.output
    assert json.loads(run("connections", "get", "wh").output)["password"] == "p@w"


def test_rotate_fernet_key(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", old)
    get_settings.cache_clear()
    run("variables", "set", "v", "value")
    run("connections", "add", "c", "--conn-uri", "http://u:pw@h")
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", f"{new},{old}")
    get_settings.cache_clear()
    result = run("rotate-fernet-key")
    assert result.exit_code == 0 and "2 values re-encrypted" in result.output
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", new)
    get_settings.cache_clear()
    assert run("variables", "get", "v").output == "value\n"


def test_sync_once_and_sync_status(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "variables.json"
    good.write_text(json.dumps({"from_file": "yes"}))
    bad = tmp_path / "broken.json"
    bad.write_text('{"half": ')
    sources = [{"kind": "file", "path": str(good)}, {"kind": "file", "path": str(bad)}]
    monkeypatch.setenv("KETCH__VARIABLES__SYNC_SOURCES", json.dumps(sources))
    get_settings.cache_clear()
    result = run("variables", "sync", "--once", "-o", "json")
    assert result.exit_code == 1  # one source failed
    rows = {r["ok"]: r for r in json.loads(result.output)}
    assert rows[True]["managed_keys"] == 1 and rows[False]["last_error"]
    assert run("variables", "get", "from_file").output == "yes\n"
    status = json.loads(run("variables", "sync-status", "-o", "json").output)
    assert sorted(r["managed_keys"] for r in status) == [0, 1]
    assert "yes" not in run("variables", "sync-status").output


# --- secrets from stdin or a file, not argv ----------------------------------------------------


def test_variables_set_reads_the_value_from_stdin_or_a_file(engine: Engine, tmp_path: Path) -> None:
    assert run("variables", "set", "db_password", "-", input="s3cret\n").exit_code == 0
    assert run("variables", "get", "db_password").output == "s3cret\n"  # echo adds the \n
    run("variables", "set", "two", "-", input="a\n\n")  # only one newline is removed
    assert run("variables", "get", "two").output == "a\n\n"
    run("variables", "set", "kept", "-", "--keep-newline", input="line\n")
    assert run("variables", "get", "kept").output == "line\n\n"
    pem = tmp_path / "key.pem"
    pem.write_bytes(b"-----BEGIN KEY-----\r\nabc\r\n-----END KEY-----\r\n")
    assert run("variables", "set", "tls_key", "--from-file", str(pem)).exit_code == 0
    with Session(engine) as session:  # stored byte for byte (a CliRunner's output is not)
        stored = store.get_variable(session, get_settings(), "tls_key").value
    assert stored == "-----BEGIN KEY-----\r\nabc\r\n-----END KEY-----"
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"a": [1]}\n')
    ok = run("variables", "set", "cfg", "--from-file", str(cfg), "--json", "--description", "d")
    assert ok.exit_code == 0, ok.output
    assert json.loads(run("variables", "get", "cfg", "--json").output) == {"a": [1]}
    assert run("variables", "set", "s", "--from-file", "-", input="x\n").exit_code == 0
    assert run("variables", "get", "s").output == "x\n"
    # The argv form is unchanged.
    assert run("variables", "set", "plain", "value").exit_code == 0
    assert run("variables", "get", "plain").output == "value\n"


def test_variables_set_without_a_value_is_a_usage_error(engine: Engine, tmp_path: Path) -> None:
    none = run("variables", "set", "k")
    assert none.exit_code == 2
    assert "no value: give VALUE, - to read it from stdin, or --from-file PATH" in none.output
    both = run("variables", "set", "k", "v", "--from-file", str(tmp_path / "f"))
    assert both.exit_code == 2 and "either VALUE or --from-file" in both.output
    newline = run("variables", "set", "k", "v", "--keep-newline")
    assert newline.exit_code == 2 and "--keep-newline is for a value read" in newline.output
    missing = run("variables", "set", "k", "--from-file", str(tmp_path / "nope"))
    assert missing.exit_code == 1
    assert missing.output.startswith("ketch: cannot read the value from ")
    assert "No such file or directory" in missing.output
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00")
    bad = run("variables", "set", "k", "--from-file", str(binary))
    assert bad.exit_code == 1 and "not UTF-8 text" in bad.output
    assert run("variables", "get", "k").exit_code == 1  # nothing was set


def test_connections_add_reads_the_password_from_stdin_or_a_file(
    engine: Engine, tmp_path: Path
) -> None:
    def password(conn_id: str) -> str:
        return str(json.loads(run("connections", "get", conn_id).output)["password"])

    added = run(
        "connections",
        "add",
        "wh",
        "--conn-type",
        "postgres",
        "--conn-host",
        "db",
        "--password-stdin",
        input="p@ss word\n",
    )
    assert added.exit_code == 0, added.output
    assert password("wh") == "p@ss word"
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    uri = "postgres://u@db:5432/app"  # no password in the URI
    added = run("connections", "add", "u", "--conn-uri", uri, "--password-from-file", str(secret))
    assert added.exit_code == 0, added.output
    assert password("u") == "from-a-file"
    assert run("connections", "get", "u", "-o", "uri").output == (
        "postgres://u:from-a-file@db:5432/app\n"
    )
    as_json = run(
        "connections",
        "add",
        "j",
        "--conn-json",
        '{"conn_type": "http", "password": "replaced"}',
        "--password-stdin",
        input="given",
    )
    assert as_json.exit_code == 0 and password("j") == "given"
    several = run(
        "connections", "add", "x", "--conn-type", "http", "--conn-password", "a", "--password-stdin"
    )
    assert several.exit_code == 2
    assert "give one of --conn-password, --password-stdin, not several" in several.output
    missing = run(
        "connections", "add", "x", "--conn-type", "http", "--password-from-file", "/nonexistent"
    )
    assert missing.exit_code == 1 and "cannot read the password from /nonexistent" in missing.output
    assert run("connections", "get", "x").exit_code == 1


def test_connections_list_hides_sensitive_extras(engine: Engine) -> None:
    extra = '{"region": "eu", "api_key": "k-123", "nested": {"token": "t-9"}}'
    run("connections", "add", "svc", "--conn-type", "http", "--conn-extra", extra)
    rows = json.loads(run("connections", "list", "-o", "json").output)
    assert json.loads(rows[0]["extra"]) == {
        "region": "eu",
        "api_key": "***",
        "nested": {"token": "***"},
    }
    # get prints what was asked for, on the database.
    assert json.loads(run("connections", "get", "svc").output)["extra"] == extra
